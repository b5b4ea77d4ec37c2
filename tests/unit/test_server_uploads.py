"""The upload memory of one process (``imgshare.server.uploads``).

The quota and the upload places per user moved to the catalog (see
``test_store_transaction.py``); what is left here is per-process memory.
"""

from __future__ import annotations

import threading
import time

import pytest

from imgshare.errors import QuotaError, TryLaterError
from imgshare.server.uploads import MIB, MIN_UPLOAD_MEMORY, MemoryBudget, MemoryHold


def test_minimum_memory_is_one_mib() -> None:
    assert MIN_UPLOAD_MEMORY == MIB == 1024 * 1024


def test_a_hold_takes_its_size_until_released() -> None:
    budget = MemoryBudget(64 * MIB)
    assert budget.used == 0
    hold = budget.hold(3 * MIB)
    assert isinstance(hold, MemoryHold)
    assert hold.size == 3 * MIB
    assert budget.used == 3 * MIB
    other = budget.hold(5 * MIB)
    assert budget.used == 8 * MIB
    hold.release()
    assert budget.used == 5 * MIB
    other.release()
    assert budget.used == 0


def test_small_buffers_still_cost_the_minimum() -> None:
    budget = MemoryBudget(3 * MIB)
    holds = [budget.hold(buffer) for buffer in (0, 1, MIB // 2)]
    assert [hold.size for hold in holds] == [MIN_UPLOAD_MEMORY] * 3
    assert budget.used == 3 * MIB
    with pytest.raises(TryLaterError):  # a fourth upload of tiny buffers does not fit
        budget.hold(1)
    assert budget.used == 3 * MIB


def test_a_full_budget_says_try_later() -> None:
    budget = MemoryBudget(10 * MIB)
    first = budget.hold(6 * MIB)
    budget.hold(4 * MIB)  # exactly the budget
    assert budget.used == 10 * MIB
    with pytest.raises(TryLaterError, match="too many images") as refused:
        budget.hold(0)  # even the floor does not fit
    assert refused.value.retry_after > 0
    assert not isinstance(refused.value, QuotaError)
    assert budget.used == 10 * MIB  # the refusal took nothing
    first.release()
    assert budget.used == 4 * MIB
    with pytest.raises(TryLaterError):  # one byte over what is free
        budget.hold(6 * MIB + 1)
    budget.hold(6 * MIB)
    assert budget.used == 10 * MIB


def test_one_hold_larger_than_the_budget_is_refused() -> None:
    budget = MemoryBudget(8 * MIB)
    with pytest.raises(TryLaterError):
        budget.hold(8 * MIB + 1)
    assert budget.used == 0
    budget.hold(8 * MIB).release()


def test_a_budget_below_the_minimum_admits_nothing() -> None:
    budget = MemoryBudget(MIN_UPLOAD_MEMORY - 1)
    with pytest.raises(TryLaterError):
        budget.hold(0)
    assert budget.used == 0


def test_release_is_idempotent() -> None:
    budget = MemoryBudget(4 * MIB)
    first = budget.hold(2 * MIB)
    second = budget.hold(2 * MIB)
    for _ in range(3):
        first.release()
    assert budget.used == 2 * MIB  # not 0 or less: released once only
    with pytest.raises(TryLaterError):  # second's 2 MiB still count
        budget.hold(2 * MIB + 1)
    second.release()
    second.release()
    assert budget.used == 0
    # Everything is back.
    again = [budget.hold(2 * MIB) for _ in range(2)]
    assert budget.used == 4 * MIB
    for hold in again:
        hold.release()
    budget.hold(4 * MIB)


def test_many_threads_never_exceed_the_budget() -> None:
    budget = MemoryBudget(4 * MIB)
    lock = threading.Lock()
    state = {"held": 0, "peak": 0, "admitted": 0, "refused": 0, "over": 0}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(size: int) -> None:
        try:
            start.wait()
            for _ in range(500):
                try:
                    hold = budget.hold(size)
                except TryLaterError:
                    with lock:
                        state["refused"] += 1
                    continue
                with lock:
                    state["held"] += hold.size
                    state["peak"] = max(state["peak"], state["held"])
                    state["admitted"] += 1
                    if budget.used > budget.limit:
                        state["over"] += 1
                time.sleep(0.0001)  # hold it a moment: let the others compete
                with lock:
                    state["held"] -= hold.size
                hold.release()
                hold.release()  # a second release from the same thread changes nothing
        except BaseException as exc:  # reported below
            errors.append(exc)

    sizes = [0, MIB, 2 * MIB, 3 * MIB]  # floors and bigger holds mixed
    threads = [threading.Thread(target=worker, args=(sizes[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert state["over"] == 0
    assert state["peak"] <= 4 * MIB
    assert state["admitted"] > 0
    assert state["refused"] > 0  # the threads really did compete
    assert budget.used == 0


def test_concurrent_releases_of_one_hold_give_back_once() -> None:
    budget = MemoryBudget(4 * MIB)
    for _ in range(50):
        hold = budget.hold(3 * MIB)
        barrier = threading.Barrier(4)

        def release(hold: MemoryHold = hold, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            hold.release()

        threads = [threading.Thread(target=release) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert budget.used == 0
