"""The upload pipeline's recycled buffers (``imgshare.server.pipeline``).

No sleeps: the tests synchronise through the queue itself. With ``depth=1``, ``submit``
returns only once the worker has taken the item before; the worker finishes an item
(step, then buffer back to the spares) before it takes the next one. So after two more
submits, every earlier item has been processed and its buffer given back.
"""

from __future__ import annotations

import gc
import threading
import types

from imgshare.server.pipeline import Item, Pipeline


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
