"""The decode memory budget: concurrent image checks never hold more than it together."""

from __future__ import annotations

import threading
import time
from io import BytesIO

import pytest
from PIL import Image

from imgshare.errors import ConfigError
from imgshare.server.images import DECODE_BYTES_PER_PIXEL, DecodeMemory, ImagePolicy, validate_image


def _hold(
    budget: DecodeMemory, size: int, entered: threading.Event, leave: threading.Event
) -> None:
    with budget.reserve(size):
        entered.set()
        leave.wait(5)


def test_a_reservation_waits_until_the_budget_holds_it() -> None:
    budget = DecodeMemory(100)
    first_in, first_out = threading.Event(), threading.Event()
    second_in, second_out = threading.Event(), threading.Event()
    threading.Thread(target=_hold, args=(budget, 70, first_in, first_out)).start()
    assert first_in.wait(5)
    threading.Thread(target=_hold, args=(budget, 40, second_in, second_out)).start()
    assert not second_in.wait(0.2)  # 70 + 40 > 100: it waits
    first_out.set()
    assert second_in.wait(5)  # and goes once the first is done
    second_out.set()


def test_a_decode_larger_than_the_budget_runs_alone() -> None:
    budget = DecodeMemory(100)
    small_in, small_out = threading.Event(), threading.Event()
    big_in, big_out = threading.Event(), threading.Event()
    threading.Thread(target=_hold, args=(budget, 10, small_in, small_out)).start()
    assert small_in.wait(5)
    threading.Thread(target=_hold, args=(budget, 500, big_in, big_out)).start()
    assert not big_in.wait(0.2)
    small_out.set()
    assert big_in.wait(5)  # alone, not refused
    late_in, late_out = threading.Event(), threading.Event()
    threading.Thread(target=_hold, args=(budget, 1, late_in, late_out)).start()
    assert not late_in.wait(0.2)  # nothing joins it
    big_out.set()
    assert late_in.wait(5)
    late_out.set()


def test_validation_reserves_the_decode_of_its_format() -> None:
    """A WebP of 64 x 64 reserves 64 x 64 x 16 bytes while Pillow decodes it."""
    buffer = BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "WEBP")
    budget = DecodeMemory(64 * 64 * DECODE_BYTES_PER_PIXEL["WEBP"] - 1)
    other_in, other_out = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(budget, 1, other_in, other_out))
    holder.start()
    assert other_in.wait(5)
    done = threading.Event()

    def check() -> None:
        buffer.seek(0)
        validate_image(buffer, ImagePolicy(decode_memory=budget))
        done.set()

    threading.Thread(target=check).start()
    time.sleep(0.2)
    assert not done.is_set()  # 1 byte held + the WebP's reservation > the budget
    other_out.set()
    assert done.wait(5)


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        DecodeMemory(0)
