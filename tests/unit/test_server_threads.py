"""ThreadReuse: a thread of its own for every job, reused once idle, gone after ``keep``.

Real threads, no mocks. Every wait is bounded, so a lost job fails the test instead
of hanging it.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from imgshare.server.threads import ThreadReuse

#: Upper bound of any wait: generous, because only a bug makes a test wait this long.
WAIT = 3.0


def wait_until(condition: Callable[[], bool], seconds: float = WAIT) -> bool:
    """Poll ``condition`` every 10 ms until it holds or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_idle(pool: ThreadReuse, count: int) -> None:
    """Wait until ``count`` workers are back waiting for a job.

    A job that has returned is not yet an idle thread: the worker counts itself idle
    just after. The private count is the only signal of that moment; without this
    wait, a test that runs its next job at once may fairly get a new thread.
    """
    assert wait_until(lambda: pool._idle == count), f"idle {pool._idle}, expected {count}"


def test_sequential_jobs_run_on_one_thread() -> None:
    pool = ThreadReuse(keep=1.0)
    threads: list[threading.Thread] = []
    for _ in range(5):
        done = threading.Event()

        def job(done: threading.Event = done) -> None:
            threads.append(threading.current_thread())
            done.set()

        pool.run(job)
        assert done.wait(WAIT)
        wait_idle(pool, 1)
    assert len({thread.ident for thread in threads}) == 1
    assert threads[0] is not threading.main_thread()
    assert threads[0].name == "connection"
    assert threads[0].daemon


def run_blocked(pool: ThreadReuse, count: int) -> list[threading.Thread]:
    """Run ``count`` jobs that all wait on one barrier, which only opens once every job
    is running at the same time; return the threads they ran on."""
    barrier = threading.Barrier(count + 1)
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def job() -> None:
        with lock:
            threads.append(threading.current_thread())
        barrier.wait(WAIT)

    for _ in range(count):
        pool.run(job)
    barrier.wait(WAIT)  # BrokenBarrierError if some job waits for a free thread
    return threads


def test_blocking_jobs_run_at_once_on_distinct_threads() -> None:
    pool = ThreadReuse(keep=1.0)
    first = run_blocked(pool, 8)
    assert len({thread.ident for thread in first}) == 8
    wait_idle(pool, 8)
    second = run_blocked(pool, 8)
    assert set(second) == set(first)  # the same threads, no new one


def test_idle_threads_exit_after_keep() -> None:
    pool = ThreadReuse(keep=0.2)
    threads = run_blocked(pool, 4)
    assert wait_until(lambda: not any(thread.is_alive() for thread in threads))
    assert pool._idle == 0
    # Nothing stale is left to hand a job to: the next job gets a new thread and runs.
    later = run_blocked(pool, 2)
    assert not set(later) & set(threads)


def test_close_lets_idle_threads_exit_at_once_and_running_jobs_finish() -> None:
    pool = ThreadReuse(keep=30.0)  # only close() can end these threads in time
    threads = run_blocked(pool, 3)
    wait_idle(pool, 3)
    release = threading.Event()
    done = threading.Event()

    def running() -> None:
        release.wait(WAIT)
        done.set()

    pool.run(running)  # takes one of the idle threads
    pool.close()
    # The two idle threads go at once; the busy one is left alone.
    assert wait_until(lambda: sum(thread.is_alive() for thread in threads) == 1, 1.0)
    release.set()
    assert done.wait(WAIT)
    # Its thread is idle again now, and a second close() lets it go too.
    wait_idle(pool, 1)
    pool.close()
    assert wait_until(lambda: not any(thread.is_alive() for thread in threads), 1.0)
    later = run_blocked(pool, 2)
    assert not set(later) & set(threads)
    wait_idle(pool, 2)
    pool.close()
    assert wait_until(lambda: not any(thread.is_alive() for thread in later), 1.0)


class Job:
    """A job that a weak reference can watch."""

    def __init__(self) -> None:
        self.ran = threading.Event()

    def __call__(self) -> None:
        self.ran.set()


def test_a_finished_job_is_not_kept_alive_by_its_waiting_thread() -> None:
    """A server's job holds a connection: an idle thread must not keep it for ``keep``."""
    pool = ThreadReuse(keep=1.0)
    for _ in range(2):  # first on a new thread, then handed to the idle one
        job = Job()
        ref = weakref.ref(job)
        pool.run(job)
        assert job.ran.wait(WAIT)
        del job
        wait_idle(pool, 1)
        assert ref() is None
    pool.close()


def test_a_job_that_raises_loses_its_thread_but_no_later_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exception reaches threading.excepthook and ends that worker; the idle count
    stays right, so every later job still finds a thread (none is queued for a dead
    one). ConnectionHandler.run catches Exception itself, so in the server only a
    BaseException can get this far."""
    reported: list[BaseException | None] = []
    failed = threading.Semaphore(0)

    def hook(args: threading.ExceptHookArgs) -> None:
        reported.append(args.exc_value)
        failed.release()

    monkeypatch.setattr(threading, "excepthook", hook)

    def bad() -> None:
        raise ValueError("job failed")

    pool = ThreadReuse(keep=1.0)
    pool.run(bad)  # on a new thread
    assert failed.acquire(timeout=WAIT)
    run_blocked(pool, 2)
    wait_idle(pool, 2)
    pool.run(bad)  # handed to an idle thread
    assert failed.acquire(timeout=WAIT)
    wait_idle(pool, 1)
    assert [type(exc) for exc in reported] == [ValueError, ValueError]
    # Three blocking jobs need the one idle thread and two new ones: if the dead
    # worker were still counted idle, one job would sit in the queue and the barrier
    # would break.
    run_blocked(pool, 3)


def spin(seconds: float) -> None:
    """Wait while holding the GIL (see below)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_every_job_runs_exactly_once_while_threads_time_out() -> None:
    """A job handed to a worker just as its wait for a job times out still runs.

    The gaps spin instead of sleeping: a worker whose wait timed out then needs the
    GIL, which a spinning thread gives up only after the 5 ms switch interval. A job
    submitted in that window is already queued when the worker sees the timeout, the
    case ThreadReuse rechecks under its lock. Gaps from 12 to 20 ms land there
    (``keep`` + wake-up + switch interval): without that recheck, this test lost a
    job in every run, whereas sleeping gaps rarely hit the window.
    """
    pool = ThreadReuse(keep=0.01)
    count = 20
    runs = [0] * count
    lock = threading.Lock()

    def job(index: int) -> None:
        with lock:
            runs[index] += 1

    gaps = (0.0, 0.012, 0.014, 0.016, 0.018, 0.020)
    for index in range(count):
        pool.run(functools.partial(job, index))
        spin(gaps[index % len(gaps)])

    def finished() -> bool:
        with lock:
            return sum(runs) >= count

    assert wait_until(finished), f"{sum(runs)} of {count} jobs ran"
    time.sleep(0.05)  # a job run twice would show up here
    assert runs == [1] * count
