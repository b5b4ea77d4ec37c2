"""The upload pipeline (``imgshare.server.pipeline``): its recycled buffers, the pooled
thread it runs on, and how a failing step is reported.

No sleeps: the tests synchronise through the queue itself. With ``depth=1``, ``submit``
returns only once the worker has taken the item before; the worker finishes an item
(step, then buffer back to the spares) before it takes the next one. So after two more
submits, every earlier item has been processed and its buffer given back.
"""

from __future__ import annotations

import gc
import threading
import time
import types
from collections.abc import Callable

import pytest

from imgshare.server.pipeline import (
    DEFAULT_DEPTH,
    Item,
    Pipeline,
    PipelineCancelled,
    memory_for,
)
from imgshare.server.threads import ThreadReuse

#: Upper bound of any wait: only a bug makes a test wait this long.
WAIT = 5.0


def wait_until(condition: Callable[[], bool], seconds: float = WAIT) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Recorder:
    """A step that keeps a copy of every item it sees (the buffers are reused)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.seen: list[bytes] = []
        self._gate = gate

    def __call__(self, item: Item) -> None:
        if self._gate is not None and not self._gate.wait(timeout=30):
            raise AssertionError("the test never opened the gate")
        self.seen.append(bytes(item))


def settle(pipeline: Pipeline) -> None:
    """Return once every item submitted so far is processed (the pipeline has depth 1)."""
    pipeline.submit(b"settle 1")
    pipeline.submit(b"settle 2")


def test_a_processed_buffer_is_handed_out_again() -> None:
    recorder = Recorder()
    pipeline = Pipeline(recorder, depth=1)
    first = pipeline.buffer(64)
    assert len(first) == 64
    first[:] = b"1" * 64
    pipeline.submit(first)
    settle(pipeline)
    again = pipeline.buffer(64)
    assert again.obj is first.obj
    again[:] = b"2" * 64
    pipeline.submit(again)
    pipeline.close()
    assert recorder.seen == [b"1" * 64, b"settle 1", b"settle 2", b"2" * 64]


def test_a_producer_never_needs_more_than_depth_plus_two_buffers() -> None:
    depth, size, count = 3, 256, 300
    gate = threading.Event()
    recorder = Recorder(gate)
    pipeline = Pipeline(recorder, depth)
    made: dict[int, object] = {}  # keeps every buffer alive, so ids stay unique
    held_back = 0
    for n in range(count):
        view = pipeline.buffer(size)
        made[id(view.obj)] = view.obj
        view[:] = n.to_bytes(2, "big") * (size // 2)
        if n == depth + 1:
            # The worker is held in its first step with `depth` items queued, so this
            # buffer is the (depth + 2)th in use at once; from now on items flow.
            held_back = len(made)
            gate.set()
        pipeline.submit(view)
    pipeline.close()
    assert held_back == depth + 2
    assert len(made) == depth + 2
    assert recorder.seen == [n.to_bytes(2, "big") * (size // 2) for n in range(count)]


def test_a_callers_own_buffer_is_never_handed_out() -> None:
    recorder = Recorder()
    pipeline = Pipeline(recorder, depth=1)
    mine = pipeline.buffer(64)
    mine[:] = b"m" * 64
    pipeline.submit(mine)
    own = bytearray(b"o" * 64)
    pipeline.submit(memoryview(own))
    pipeline.submit(memoryview(own)[8:])
    settle(pipeline)
    first, second, third = (pipeline.buffer(64) for _ in range(3))
    assert first.obj is mine.obj  # the pipeline's own buffer came back...
    assert second.obj is not own and third.obj is not own  # ...the caller's never
    assert len({id(first.obj), id(second.obj), id(third.obj)}) == 3
    pipeline.close()
    assert recorder.seen[:3] == [b"m" * 64, b"o" * 64, b"o" * 56]


def test_a_larger_request_gets_a_big_enough_buffer() -> None:
    recorder = Recorder()
    pipeline = Pipeline(recorder, depth=1)
    small = pipeline.buffer(16)
    small[:] = b"s" * 16
    pipeline.submit(small)
    settle(pipeline)
    big = pipeline.buffer(1000)
    assert len(big) == 1000
    assert isinstance(big.obj, bytearray) and len(big.obj) >= 1000
    big[:] = b"b" * 1000
    pipeline.submit(big)
    settle(pipeline)
    smaller = pipeline.buffer(10)  # a big spare serves a small request
    assert smaller.obj is big.obj
    assert len(smaller) == 10
    pipeline.close()
    assert recorder.seen[0] == b"s" * 16
    assert recorder.seen[3] == b"b" * 1000


def _holders(obj: object) -> list[object]:
    """What still refers to ``obj``, apart from this test's frames."""
    return [r for r in gc.get_referrers(obj) if not isinstance(r, types.FrameType)]


def test_close_and_cancel_let_the_buffers_go() -> None:
    # The pipeline's owner and its step usually refer to each other (a cycle the
    # garbage collector frees late), so the pipeline must drop its buffers itself.
    for stop in (Pipeline.close, Pipeline.cancel):
        pipeline = Pipeline(lambda item: None, depth=1)
        view = pipeline.buffer(64)
        base = view.obj
        pipeline.submit(view)
        del view
        stop(pipeline)
        assert _holders(base) == []


def test_memory_for_counts_queued_in_step_and_filling() -> None:
    assert memory_for(1000, depth=3) == 5000
    assert memory_for(1000) == (DEFAULT_DEPTH + 2) * 1000


# --- the thread it runs on -----------------------------------------------------------------


class ThreadRecorder:
    """A step that notes which thread ran it and what ``in_step`` said there."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.threads: list[threading.Thread] = []
        self.in_step: list[bool] = []

    def __call__(self, item: Item) -> None:
        assert self.pipeline is not None
        self.threads.append(threading.current_thread())
        self.in_step.append(self.pipeline.in_step())


def test_steps_run_on_one_pooled_thread_not_the_callers() -> None:
    pool = ThreadReuse(keep=5.0, name="upload-pipeline")
    recorder = ThreadRecorder()
    pipeline = Pipeline(recorder, depth=1, threads=pool)
    recorder.pipeline = pipeline
    assert pipeline.in_step() is False  # the caller is not the pipeline's thread
    assert pipeline.stopped is False
    for n in range(5):
        pipeline.submit(bytes([n]))
    pipeline.close()
    assert pipeline.stopped is True
    assert len({t.ident for t in recorder.threads}) == 1
    worker = recorder.threads[0]
    assert worker is not threading.current_thread()
    assert worker.name == "upload-pipeline" and worker.daemon
    assert recorder.in_step == [True] * 5
    assert pipeline.in_step() is False
    pool.close()


def test_a_later_pipeline_reuses_the_idle_thread() -> None:
    pool = ThreadReuse(keep=5.0, name="upload-pipeline")
    seen: list[threading.Thread] = []
    for _ in range(3):
        recorder = ThreadRecorder()
        pipeline = Pipeline(recorder, depth=1, threads=pool)
        recorder.pipeline = pipeline
        pipeline.submit(b"x")
        pipeline.close()
        seen += recorder.threads
        # The job has ended; the thread counts itself idle just after.
        assert wait_until(lambda: pool._idle == 1)
    assert len({t.ident for t in seen}) == 1
    pool.close()


def test_two_pipelines_at_once_run_on_two_threads() -> None:
    pool = ThreadReuse(keep=5.0, name="upload-pipeline")
    gate = threading.Event()
    started = threading.Barrier(3, timeout=WAIT)
    threads: list[threading.Thread] = []

    def step(item: Item) -> None:
        threads.append(threading.current_thread())
        started.wait()  # both steps run at the same time, or this times out
        assert gate.wait(WAIT)

    first = Pipeline(step, threads=pool)
    second = Pipeline(step, threads=pool)
    first.submit(b"1")
    second.submit(b"2")
    started.wait()
    gate.set()
    first.close()
    second.close()
    assert len({t.ident for t in threads}) == 2
    pool.close()


def test_pipelines_without_a_pool_share_the_default_one() -> None:
    recorder = ThreadRecorder()
    pipeline = Pipeline(recorder, depth=1)
    recorder.pipeline = pipeline
    pipeline.submit(b"x")
    pipeline.close()
    (worker,) = recorder.threads
    assert worker.name == "upload-pipeline"
    assert worker is not threading.current_thread()


# --- failures ------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_a_failing_step_stops_the_work_and_calls_on_failure_at_once() -> None:
    told: list[tuple[BaseException, threading.Thread, bool]] = []
    told_event = threading.Event()
    stepped: list[bytes] = []
    pipeline: Pipeline

    def step(item: Item) -> None:
        stepped.append(bytes(item))
        if bytes(item) == b"bad":
            raise Boom("chunk 1 does not verify")

    def on_failure(exc: BaseException) -> None:
        told.append((exc, threading.current_thread(), pipeline.in_step()))
        told_event.set()

    pipeline = Pipeline(step, depth=4, on_failure=on_failure)
    assert pipeline.error is None
    pipeline.submit(b"good")
    pipeline.submit(b"bad")
    assert told_event.wait(WAIT)  # heard of it without another submit or close
    ((exc, thread, in_step),) = told
    assert isinstance(exc, Boom)
    assert thread is not threading.current_thread()  # from the pipeline's thread...
    assert in_step is True  # ...which knows it is inside a step
    assert pipeline.error is exc
    with pytest.raises(Boom):
        pipeline.check()
    with pytest.raises(Boom):
        pipeline.submit(b"after")  # refused: never queued
    with pytest.raises(Boom):
        pipeline.close()
    assert pipeline.stopped
    assert stepped == [b"good", b"bad"]
    assert len(told) == 1  # once


def test_items_queued_behind_a_failure_never_reach_the_step() -> None:
    gate = threading.Event()
    stepped: list[bytes] = []

    def step(item: Item) -> None:
        assert gate.wait(WAIT)
        stepped.append(bytes(item))
        raise Boom("first item fails")

    pipeline = Pipeline(step, depth=3)

    for n in range(3):
        view = pipeline.buffer(8)
        view[:] = bytes([n]) * 8

        pipeline.submit(view)
    gate.set()
    with pytest.raises(Boom):
        pipeline.close()
    assert stepped == [bytes(8)]  # only the first item reached the step
    assert isinstance(pipeline.error, Boom)


def test_check_does_not_raise_before_a_failure_nor_after_a_cancel() -> None:
    pipeline = Pipeline(lambda item: None, depth=1)
    pipeline.check()
    pipeline.submit(b"x")
    pipeline.cancel()
    pipeline.check()  # a cancel is not a failure
    assert isinstance(pipeline.error, PipelineCancelled)
    assert pipeline.stopped


def test_cancel_drops_what_is_queued() -> None:
    gate = threading.Event()
    in_step = threading.Event()
    stepped: list[bytes] = []
    told: list[BaseException] = []

    def step(item: Item) -> None:
        in_step.set()
        assert gate.wait(WAIT)
        stepped.append(bytes(item))

    pipeline = Pipeline(step, depth=4, on_failure=told.append)
    for item in (b"a", b"b", b"c"):
        pipeline.submit(item)
    assert in_step.wait(WAIT)  # a is in the step; b and c are queued
    canceller = threading.Thread(target=pipeline.cancel)
    canceller.start()  # it waits for the step in progress to end
    assert wait_until(lambda: isinstance(pipeline.error, PipelineCancelled))
    assert not pipeline.stopped
    gate.set()
    canceller.join(WAIT)
    assert not canceller.is_alive()
    assert pipeline.stopped
    assert stepped == [b"a"]  # b and c were dropped
    assert told == []  # a cancel is not reported as a failure
    pipeline.cancel()  # idempotent
    pipeline.check()


def test_a_step_error_stays_the_error_after_a_cancel() -> None:
    failed = threading.Event()

    def step(item: Item) -> None:
        raise Boom("tampered")

    pipeline = Pipeline(step, depth=1, on_failure=lambda exc: failed.set())
    pipeline.submit(b"x")
    assert failed.wait(WAIT)
    pipeline.cancel()
    assert isinstance(pipeline.error, Boom)  # the reason is kept, not replaced
    with pytest.raises(Boom):
        pipeline.check()
