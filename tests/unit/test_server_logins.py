"""The hash gate and the login throttle (``imgshare.server.logins``), and their use by
``Accounts.authenticate``.

Real threads and a real SQLite catalog; time in the throttle is a fake clock. Every
wait on a thread is bounded, so a lost wake-up fails a test instead of hanging it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from imgshare.errors import AuthError, TryLaterError
from imgshare.server.accounts import Accounts
from imgshare.server.logins import (
    _PRUNE_EVERY,
    HashGate,
    Line,
    LoginThrottle,
    ThrottlePolicy,
    network_of,
)
from imgshare.store.catalog import SQLiteCatalog

#: Upper bound of any wait on another thread: only a bug makes a test wait this long.
WAIT = 5.0
PASSWORD = "correct horse battery staple"
START = 1_700_000_000.0


def wait_until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


class FakeClock:
    """``time.time`` stand-in that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Blocker:
    """Holds a gate slot from another thread until ``release()``."""

    def __init__(self, gate: HashGate, line: Line = Line.KNOWN) -> None:
        self.entered = threading.Event()
        self._leave = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(gate, line), daemon=True)
        self.thread.start()
        assert self.entered.wait(WAIT)

    def _run(self, gate: HashGate, line: Line) -> None:
        with gate.slot(line):
            self.entered.set()
            self._leave.wait(WAIT)

    def release(self) -> None:
        self._leave.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + WAIT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a waiter never got its slot"


# --- HashGate --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"slots": 0},
        {"slots": -1},
        {"slots": 1, "max_waiting": -1},
        {"slots": 1, "max_wait": -0.1},
    ],
)
def test_gate_refuses_bad_settings(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="slots"):
        HashGate(**arguments)


def test_lines_are_ranked() -> None:
    assert [line.name for line in sorted(Line)] == ["KNOWN", "UNKNOWN", "SUSPECT"]


def test_free_slots_are_taken_without_waiting() -> None:
    gate = HashGate(2, max_waiting=0)  # any wait at all would raise
    with gate.slot(), gate.slot(Line.SUSPECT):
        with pytest.raises(TryLaterError):
            with gate.slot(Line.KNOWN):
                pass  # pragma: no cover - never entered
    with gate.slot(Line.UNKNOWN):
        assert gate.waiting == 0


def test_at_most_slots_run_at_once() -> None:
    gate = HashGate(3, max_waiting=32, max_wait=WAIT)
    lock = threading.Lock()
    state = {"running": 0, "peak": 0, "done": 0}
    leave = threading.Event()

    def hash_once(line: Line) -> None:
        with gate.slot(line):
            with lock:
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
            leave.wait(WAIT)
            with lock:
                state["running"] -= 1
                state["done"] += 1

    threads = [start(lambda i=i: hash_once(Line(i % 3))) for i in range(10)]
    wait_until(lambda: state["running"] == 3 and gate.waiting == 7)
    assert state["peak"] == 3
    leave.set()
    join_all(threads)
    assert state == {"running": 0, "peak": 3, "done": 10}
    assert gate.waiting == 0


def test_an_error_inside_the_slot_frees_it() -> None:
    gate = HashGate(1, max_waiting=0)
    with pytest.raises(RuntimeError), gate.slot():
        raise RuntimeError("hash failed")
    with gate.slot():  # would be TryLaterError at once if the slot had leaked
        pass


def run_in_order(gate: HashGate, arrivals: list[tuple[str, Line]]) -> list[str]:
    """Queue ``arrivals`` one after the other behind a held slot, let the slot go,
    and return the order in which they got it."""
    holder = Blocker(gate)
    order: list[str] = []

    def login(name: str, line: Line) -> None:
        with gate.slot(line):
            order.append(name)

    threads = []
    for count, (name, line) in enumerate(arrivals, start=1):
        threads.append(start(lambda n=name, li=line: login(n, li)))
        wait_until(lambda c=count: gate.waiting == c)  # each in line before the next
    holder.release()
    join_all(threads)
    return order


def test_a_better_line_goes_first_even_if_later() -> None:
    gate = HashGate(1, max_waiting=8, max_wait=WAIT)
    order = run_in_order(
        gate,
        [
            ("suspect-1", Line.SUSPECT),
            ("unknown-1", Line.UNKNOWN),
            ("suspect-2", Line.SUSPECT),
            ("known-1", Line.KNOWN),
            ("unknown-2", Line.UNKNOWN),
            ("known-2", Line.KNOWN),
        ],
    )
    assert order == ["known-1", "known-2", "unknown-1", "unknown-2", "suspect-1", "suspect-2"]


def test_each_line_is_first_come_first_served() -> None:
    gate = HashGate(1, max_waiting=8, max_wait=WAIT)
    arrivals = [(f"unknown-{i}", Line.UNKNOWN) for i in range(5)]
    assert run_in_order(gate, arrivals) == [name for name, _ in arrivals]


def test_a_newcomer_with_nobody_ahead_takes_a_free_slot() -> None:
    gate = HashGate(2, max_waiting=8, max_wait=WAIT)
    holder = Blocker(gate)  # one of two slots taken
    with gate.slot(Line.SUSPECT):  # nobody waits: the free slot is taken at once
        assert gate.waiting == 0
    holder.release()


def test_a_full_line_is_refused_at_once() -> None:
    gate = HashGate(1, max_waiting=2, max_wait=WAIT)
    holder = Blocker(gate)
    entered: list[Line] = []

    def login(line: Line) -> None:
        with gate.slot(line):
            entered.append(line)

    threads = [start(lambda: login(Line.KNOWN)) for _ in range(2)]
    wait_until(lambda: gate.waiting == 2)
    began = time.monotonic()
    with pytest.raises(TryLaterError, match="too many logins") as refused:
        with gate.slot(Line.KNOWN):
            pass  # pragma: no cover - never entered
    assert time.monotonic() - began < WAIT / 2  # not after waiting max_wait
    assert refused.value.retry_after > 0
    assert gate.waiting == 2  # the refused caller left no ticket behind
    # Each line is bounded on its own: the others still have room.
    threads.append(start(lambda: login(Line.UNKNOWN)))
    wait_until(lambda: gate.waiting == 3)
    threads.append(start(lambda: login(Line.SUSPECT)))
    wait_until(lambda: gate.waiting == 4)
    holder.release()
    join_all(threads)
    assert entered == [Line.KNOWN, Line.KNOWN, Line.UNKNOWN, Line.SUSPECT]
    assert gate.waiting == 0


@pytest.mark.parametrize("line", list(Line))
def test_a_full_line_of_any_rank_is_refused(line: Line) -> None:
    gate = HashGate(1, max_waiting=1, max_wait=WAIT)
    holder = Blocker(gate)
    entered: list[bool] = []

    def login() -> None:
        with gate.slot(line):
            entered.append(True)

    thread = start(login)
    wait_until(lambda: gate.waiting == 1)
    with pytest.raises(TryLaterError) as refused:
        with gate.slot(line):
            pass  # pragma: no cover - never entered
    assert refused.value.retry_after > 0
    holder.release()
    join_all([thread])
    assert entered == [True]


def test_no_waiting_allowed_means_busy_is_refused() -> None:
    gate = HashGate(1, max_waiting=0, max_wait=WAIT)
    holder = Blocker(gate)
    for line in Line:
        with pytest.raises(TryLaterError) as refused:
            with gate.slot(line):
                pass  # pragma: no cover - never entered
        assert refused.value.retry_after > 0
    holder.release()


def test_a_wait_longer_than_max_wait_is_refused() -> None:
    gate = HashGate(1, max_waiting=8, max_wait=0.05)
    holder = Blocker(gate)
    began = time.monotonic()
    with pytest.raises(TryLaterError, match="too many logins") as refused:
        with gate.slot(Line.UNKNOWN):
            pass  # pragma: no cover - never entered
    waited = time.monotonic() - began
    assert 0.04 <= waited < WAIT / 2
    assert refused.value.retry_after > 0
    assert gate.waiting == 0  # its place in line was given back
    holder.release()
    # The slot is free again: a caller gets it at once.
    began = time.monotonic()
    with gate.slot(Line.SUSPECT):
        pass
    assert time.monotonic() - began < 0.04


def test_a_timed_out_head_of_line_does_not_block_those_behind() -> None:
    gate = HashGate(1, max_waiting=8, max_wait=0.6)
    holder = Blocker(gate)
    outcome: dict[str, str] = {}

    def login(name: str, line: Line) -> None:
        try:
            with gate.slot(line):
                outcome[name] = "in"
        except TryLaterError:
            outcome[name] = "try later"

    head = start(lambda: login("head", Line.KNOWN))
    wait_until(lambda: gate.waiting == 1)
    time.sleep(0.3)  # real time: the gate's max_wait is on the real clock
    behind = start(lambda: login("behind", Line.SUSPECT))
    wait_until(lambda: "head" in outcome)  # the head gave up after 0.6 s
    assert outcome == {"head": "try later"}
    holder.release()  # "behind" has waited about 0.3 s of its 0.6 s
    join_all([head, behind])
    assert outcome == {"head": "try later", "behind": "in"}


def test_no_lost_wakeups_with_many_threads() -> None:
    gate = HashGate(2, max_waiting=32, max_wait=WAIT)
    lock = threading.Lock()
    state = {"running": 0, "peak": 0, "done": 0, "most_waiting": 0}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(25):
                with gate.slot(Line((index + round_) % 3)):
                    with lock:
                        state["running"] += 1
                        state["peak"] = max(state["peak"], state["running"])
                    time.sleep(0)  # let the other threads run and queue up
                    waiting = gate.waiting
                    with lock:
                        state["most_waiting"] = max(state["most_waiting"], waiting)
                        state["running"] -= 1
                        state["done"] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [start(lambda i=i: worker(i)) for i in range(20)]
    join_all(threads)
    assert errors == []
    assert state["done"] == 20 * 25
    assert state["peak"] <= 2
    assert state["most_waiting"] > 0  # the waiting path was really taken
    assert state["running"] == 0
    assert gate.waiting == 0
    # Both slots are free again: two callers get in at once.
    began = time.monotonic()
    with gate.slot(), gate.slot(Line.SUSPECT):
        assert gate.waiting == 0
    assert time.monotonic() - began < WAIT / 2


# --- ThrottlePolicy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        (0, 0.0),
        (1, 0.0),
        (4, 0.0),  # fewer than `free`: no wait
        (5, 1.0),  # `free` failures: base_delay
        (6, 2.0),
        (7, 4.0),
        (8, 8.0),
        (9, 16.0),
        (10, 32.0),
        (11, 60.0),  # 64 capped
        (12, 60.0),
        (1000, 60.0),
        (10**9, 60.0),  # no overflow
    ],
)
def test_delay_doubles_from_the_free_failures_up_to_the_cap(failures: int, expected: float) -> None:
    policy = ThrottlePolicy(base_delay=1.0, max_delay=60.0)
    delay = policy.delay(failures, 5)
    assert isinstance(delay, float)
    assert delay == expected


def test_delay_with_other_settings() -> None:
    policy = ThrottlePolicy(base_delay=0.5, max_delay=3.0)
    assert [policy.delay(n, 1) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.delay(n, 3) for n in range(7)] == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 3.0]


def test_delay_is_monotonic_and_bounded() -> None:
    policy = ThrottlePolicy(base_delay=0.3, max_delay=45.0)
    delays = [policy.delay(n, 4) for n in range(200)]
    assert delays == sorted(delays)
    assert max(delays) == 45.0
    assert min(delays) == 0.0


# --- network_of ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("10.1.2.3", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::ffff:c000:207", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
    ],
)
def test_network_of(address: str, expected: str) -> None:
    assert network_of(address) == expected


def test_one_ipv6_block_is_one_key() -> None:
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ab:cd:ef:12")
    assert network_of("2001:db8:1:2::1") != network_of("2001:db8:1:3::1")
    assert network_of("fe80::1%eth0") == network_of("fe80::2") == network_of("fe80::3%lo")


def test_ipv4_addresses_are_not_grouped() -> None:
    assert network_of("192.0.2.7") != network_of("192.0.2.8")
    assert network_of("::ffff:192.0.2.7") == network_of("192.0.2.7")


@pytest.mark.parametrize(
    "address",
    [None, "", "garbage", "192.0.2.7:443", "[2001:db8::1]", "999.1.1.1", "%eth0", "1.2.3"],
)
def test_no_usable_address_gives_none(address: str | None) -> None:
    assert network_of(address) is None


# --- LoginThrottle ---------------------------------------------------------------------

POLICY = ThrottlePolicy(
    free_per_account=3,
    free_per_address=10,
    base_delay=2.0,
    max_delay=30.0,
    forget_after=600.0,
    known_for=3000.0,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(catalog: SQLiteCatalog, clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(catalog, POLICY, clock=clock)


def refused_for(throttle: LoginThrottle, name: str, address: str | None) -> float:
    """The retry_after of a refused ``admit``; fails the test if it was admitted."""
    with pytest.raises(TryLaterError, match="failed logins") as refused:
        throttle.admit(name, address)
    return refused.value.retry_after


def test_free_failures_then_a_growing_delay(throttle: LoginThrottle, clock: FakeClock) -> None:
    for _ in range(3):  # three failed attempts are free
        assert throttle.admit("alice", None) == Line.UNKNOWN
        throttle.failed("alice", None)
    # Three failures: the next attempt waits base_delay after the last one.
    assert refused_for(throttle, "alice", None) == pytest.approx(2.0, abs=1e-3)
    clock.advance(1.5)
    assert refused_for(throttle, "alice", None) == pytest.approx(0.5, abs=1e-3)
    clock.advance(0.499)
    assert refused_for(throttle, "alice", None) == pytest.approx(0.001, abs=1e-3)
    clock.advance(0.001)
    assert throttle.admit("alice", None) == Line.UNKNOWN  # the delay is over: no lockout
    throttle.failed("alice", None)  # four failures: 4 s
    assert refused_for(throttle, "alice", None) == pytest.approx(4.0, abs=1e-3)


def test_failures_are_logged_to_the_security_log(
    throttle: LoginThrottle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="imgshare.security"):
        for _ in range(3):
            throttle.failed("alice", "192.0.2.1")
    records = [r for r in caplog.records if r.name == "imgshare.security"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "login failed"),
        (logging.INFO, "login failed"),
        (logging.WARNING, "login failed; further logins are delayed"),
    ]
    assert records[-1].fields["user"] == "alice"  # type: ignore[attr-defined]
    assert records[-1].fields["account_failures"] == 3  # type: ignore[attr-defined]
    assert records[-1].fields["network_failures"] == 3  # type: ignore[attr-defined]


def test_refused_attempts_are_not_counted(throttle: LoginThrottle, catalog: SQLiteCatalog) -> None:
    for _ in range(4):
        throttle.failed("alice", "192.0.2.1")
    for _ in range(10):
        refused_for(throttle, "alice", "192.0.2.1")
    assert catalog.login_failures("account", "alice", 0)[0] == 4
    assert catalog.login_failures("address", "192.0.2.1", 0)[0] == 4


def test_never_a_permanent_lockout(throttle: LoginThrottle, clock: FakeClock) -> None:
    waits = []
    for _ in range(40):
        try:
            throttle.admit("alice", "192.0.2.1")
        except TryLaterError as refused:
            assert 0 < refused.retry_after <= POLICY.max_delay
            waits.append(refused.retry_after)
            clock.advance(refused.retry_after)
            throttle.admit("alice", "192.0.2.1")  # right after the delay: admitted
        throttle.failed("alice", "192.0.2.1")
    assert waits[-1] == pytest.approx(POLICY.max_delay)
    assert waits == sorted(waits)


def test_another_account_is_not_slowed(throttle: LoginThrottle) -> None:
    for _ in range(8):
        throttle.failed("alice", None)
    refused_for(throttle, "alice", None)
    refused_for(throttle, "alice", "198.51.100.9")  # per account, from anywhere
    assert throttle.admit("bob", None) == Line.UNKNOWN
    assert throttle.admit("bob", "198.51.100.9") == Line.UNKNOWN


def test_a_network_whose_last_attempt_failed_is_suspect(throttle: LoginThrottle) -> None:
    assert throttle.admit("alice", "192.0.2.1") == Line.UNKNOWN
    throttle.failed("alice", "192.0.2.1")
    assert throttle.admit("bob", "192.0.2.1") == Line.SUSPECT
    assert throttle.admit("bob", "::ffff:192.0.2.1") == Line.SUSPECT  # the same IPv4 address
    assert throttle.admit("bob", "192.0.2.2") == Line.UNKNOWN
    assert throttle.admit("bob", None) == Line.UNKNOWN


def test_a_network_that_logged_in_is_known_until_it_fails(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    throttle.succeeded("alice", "192.0.2.1")
    assert throttle.admit("bob", "192.0.2.1") == Line.KNOWN
    assert throttle.admit("bob", "::ffff:192.0.2.1") == Line.KNOWN
    assert throttle.admit("bob", "192.0.2.2") == Line.UNKNOWN  # only that network
    clock.advance(1)
    throttle.failed("mallory", "192.0.2.1")  # its last attempt failed
    assert throttle.admit("bob", "192.0.2.1") == Line.SUSPECT
    clock.advance(1)
    throttle.succeeded("alice", "192.0.2.1")  # and now succeeded again
    assert throttle.admit("bob", "192.0.2.1") == Line.KNOWN


def test_a_success_without_an_address_makes_nothing_known(throttle: LoginThrottle) -> None:
    throttle.succeeded("alice", None)
    throttle.succeeded("alice", "not an address")
    assert throttle.admit("alice", None) == Line.UNKNOWN
    assert throttle.admit("alice", "192.0.2.1") == Line.UNKNOWN


def test_a_known_network_is_forgotten_after_known_for(
    throttle: LoginThrottle, clock: FakeClock, catalog_path: Path
) -> None:
    throttle.succeeded("alice", "2001:db8:0:7::1")
    clock.advance(POLICY.known_for - 1)
    assert throttle.admit("bob", "2001:db8:0:7::2") == Line.KNOWN  # the same /64
    clock.advance(2)
    assert throttle.admit("bob", "2001:db8:0:7::2") == Line.UNKNOWN
    clock.advance(_PRUNE_EVERY)
    throttle.failed("x", None)  # prunes
    db = sqlite3.connect(catalog_path)
    try:
        assert db.execute("SELECT network FROM login_networks").fetchall() == []
    finally:
        db.close()


def test_ipv6_network_is_one_key(throttle: LoginThrottle) -> None:
    throttle.failed("alice", "2001:db8:0:7::1")
    assert throttle.admit("bob", "2001:db8:0:7:ffff::9") == Line.SUSPECT
    assert throttle.admit("bob", "2001:db8:0:8::1") == Line.UNKNOWN


def test_per_address_delay_applies_to_any_name(throttle: LoginThrottle) -> None:
    # Ten names, one failure each (free per account), from one /64.
    for index in range(10):
        throttle.failed(f"user{index}", f"2001:db8::{index + 1:x}")
    assert refused_for(throttle, "fresh", "2001:db8::abcd") == pytest.approx(2.0, abs=1e-3)
    assert refused_for(throttle, "user0", "2001:db8::1") == pytest.approx(2.0, abs=1e-3)
    assert throttle.admit("fresh", "2001:db8:0:1::1") == Line.UNKNOWN  # another /64
    assert throttle.admit("fresh", None) == Line.UNKNOWN  # no address: only the account


def test_per_address_delay_for_ipv4_and_mapped(throttle: LoginThrottle) -> None:
    for index in range(10):
        throttle.failed(f"user{index}", "192.0.2.50")
    refused_for(throttle, "someone", "192.0.2.50")
    refused_for(throttle, "someone", "::ffff:192.0.2.50")
    assert throttle.admit("someone", "192.0.2.51") == Line.UNKNOWN


def test_the_longer_of_account_and_address_delay_applies(throttle: LoginThrottle) -> None:
    for index in range(10):
        throttle.failed(f"user{index}", "192.0.2.1")
    throttle.failed("alice", "192.0.2.1")
    for _ in range(2):
        throttle.failed("alice", None)
    # The address has 11 failures: 4 s; alice has 3: 2 s.
    assert refused_for(throttle, "alice", "192.0.2.1") == pytest.approx(4.0, abs=1e-3)
    assert refused_for(throttle, "alice", None) == pytest.approx(2.0, abs=1e-3)


def test_success_clears_the_account_but_not_the_address(
    throttle: LoginThrottle, catalog: SQLiteCatalog
) -> None:
    for index in range(11):
        throttle.failed("alice" if index < 4 else f"user{index}", "192.0.2.1")
    refused_for(throttle, "alice", None)
    throttle.succeeded("alice", "192.0.2.1")
    assert catalog.login_failures("account", "alice", 0) == (0, 0)
    assert throttle.admit("alice", None) == Line.UNKNOWN
    assert catalog.login_failures("address", "192.0.2.1", 0)[0] == 11
    refused_for(throttle, "alice", "192.0.2.1")  # the network still waits
    assert catalog.login_failures("account", "user5", 0)[0] == 1  # others untouched


def test_old_failures_are_forgotten(
    throttle: LoginThrottle, catalog: SQLiteCatalog, clock: FakeClock
) -> None:
    for _ in range(6):
        throttle.failed("alice", "192.0.2.1")
    clock.advance(POLICY.forget_after - 1)
    assert throttle.admit("alice", "192.0.2.1") == Line.SUSPECT  # the delay is over, not the memory
    clock.advance(2)
    assert throttle.admit("alice", "192.0.2.1") == Line.UNKNOWN  # forgotten
    throttle.failed("alice", "192.0.2.1")
    assert catalog.login_failures("account", "alice", 0)[0] == 1  # counting starts again
    assert catalog.login_failures("address", "192.0.2.1", 0)[0] == 1
    assert throttle.admit("alice", None) == Line.UNKNOWN


def test_forgotten_rows_are_deleted(
    throttle: LoginThrottle, catalog_path: Path, clock: FakeClock
) -> None:
    throttle.failed("old", "192.0.2.1")
    clock.advance(POLICY.forget_after + 120)
    throttle.failed("new", "192.0.2.2")

    db = sqlite3.connect(catalog_path)
    try:
        rows = sorted(db.execute("SELECT scope, key FROM login_failures").fetchall())
    finally:
        db.close()
    assert rows == [("account", "new"), ("address", "192.0.2.2")]


def test_failures_survive_a_restart(catalog_path: Path, clock: FakeClock) -> None:
    with SQLiteCatalog(catalog_path) as catalog:
        first = LoginThrottle(catalog, POLICY, clock=clock)
        for _ in range(5):
            first.failed("alice", "192.0.2.1")
        first.succeeded("bob", "198.51.100.7")
        before = refused_for(first, "alice", "192.0.2.1")
    clock.advance(1.0)
    with SQLiteCatalog(catalog_path) as reopened:
        second = LoginThrottle(reopened, POLICY, clock=clock)
        assert refused_for(second, "alice", "192.0.2.1") == pytest.approx(before - 1.0, abs=1e-3)
        assert second.admit("bob", "192.0.2.1") == Line.SUSPECT  # networks are remembered
        assert second.admit("bob", "198.51.100.7") == Line.KNOWN
    assert before == pytest.approx(8.0, abs=1e-3)  # five failures, three free


@pytest.mark.parametrize(
    "name", ["alice", "nobody", "Alice", "not a valid name!", "", "x" * 300, "é\u202e"]
)
def test_every_name_is_throttled_alike(
    throttle: LoginThrottle, catalog: SQLiteCatalog, name: str
) -> None:
    catalog.add_user("alice", "$argon2id$fake")
    for _ in range(3):
        assert throttle.admit(name, None) == Line.UNKNOWN
        throttle.failed(name, None)
    assert refused_for(throttle, name, None) == pytest.approx(2.0, abs=1e-3)


# --- Accounts.authenticate with a throttle ---------------------------------------------


class CountingHasher(PasswordHasher):
    """A cheap argon2id hasher that counts every hash and verify."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.calls = 0
        self.verified: list[str | bytes] = []  # the passwords checked, in order

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.calls += 1
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.calls += 1
        self.verified.append(password)
        return super().verify(hash, password)


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(catalog: SQLiteCatalog, hasher: CountingHasher, throttle: LoginThrottle) -> Accounts:
    made = Accounts(catalog, hasher, throttle=throttle)
    made.add_user("alice", PASSWORD)
    return made


def test_wrong_passwords_count_and_the_right_one_gets_in_after_the_delay(
    accounts: Accounts,
    catalog: SQLiteCatalog,
    hasher: CountingHasher,
    clock: FakeClock,
    throttle: LoginThrottle,
) -> None:
    for attempt in range(1, 4):
        with pytest.raises(AuthError, match="invalid username or password"):
            accounts.authenticate("alice", f"wrong password {attempt}", "192.0.2.1")
        assert catalog.login_failures("account", "alice", 0)[0] == attempt
        assert catalog.login_failures("address", "192.0.2.1", 0)[0] == attempt
    calls = hasher.calls
    with pytest.raises(TryLaterError) as refused:
        accounts.authenticate("alice", PASSWORD, "192.0.2.1")  # right, but too soon
    assert refused.value.retry_after == pytest.approx(2.0, abs=1e-3)
    assert hasher.calls == calls  # no hashing for a throttled attempt
    assert catalog.login_failures("account", "alice", 0)[0] == 3  # and nothing counted
    clock.advance(refused.value.retry_after)
    user = accounts.authenticate("alice", PASSWORD, "192.0.2.1")
    assert user.name == "alice"
    assert hasher.calls == calls + 1
    assert catalog.login_failures("account", "alice", 0) == (0, 0)
    assert catalog.login_failures("address", "192.0.2.1", 0)[0] == 3
    assert throttle.admit("bob", "192.0.2.1") == Line.KNOWN  # it logged in since


def test_throttled_attempts_do_no_hashing_from_anywhere(
    accounts: Accounts, hasher: CountingHasher
) -> None:
    for _ in range(3):
        with pytest.raises(AuthError):
            accounts.authenticate("alice", "wrong password", None)
    calls = hasher.calls
    for address in (None, "192.0.2.1", "2001:db8::1", "garbage"):
        for password in (PASSWORD, "wrong password", "short"):
            with pytest.raises(TryLaterError):
                accounts.authenticate("alice", password, address)
    assert hasher.calls == calls


def test_unknown_and_invalid_names_get_the_same_answers(
    accounts: Accounts, hasher: CountingHasher
) -> None:
    answers: dict[str, list[tuple[str, str, float]]] = {}
    hash_calls: dict[str, int] = {}
    for name in ("alice", "nobody", "Not Valid!"):
        seen = []
        before = hasher.calls
        for _ in range(6):
            try:
                accounts.authenticate(name, "wrong password", None)
            except (AuthError, TryLaterError) as exc:
                retry = getattr(exc, "retry_after", 0.0)
                seen.append((type(exc).__name__, str(exc), round(retry, 3)))
        answers[name] = seen
        hash_calls[name] = hasher.calls - before
    assert answers["alice"] == answers["nobody"] == answers["Not Valid!"]
    assert [kind for kind, _, _ in answers["alice"]] == ["AuthError"] * 3 + ["TryLaterError"] * 3
    assert hash_calls == {"alice": 3, "nobody": 3, "Not Valid!": 3}


def test_logins_wait_in_the_line_of_their_network(
    catalog: SQLiteCatalog, hasher: CountingHasher, throttle: LoginThrottle
) -> None:
    gate = HashGate(1, max_waiting=8, max_wait=WAIT)
    accounts = Accounts(catalog, hasher, gate=gate, throttle=throttle)
    for name in ("bob", "carol", "dave"):
        accounts.add_user(name, f"password of {name}")
    with pytest.raises(AuthError):
        accounts.authenticate("mallory", "wrong password", "192.0.2.66")
    accounts.authenticate("dave", "password of dave", "198.51.100.8")  # a known network
    holder = Blocker(gate)
    hasher.verified.clear()
    errors: list[BaseException] = []

    def login(name: str, address: str) -> None:
        try:
            accounts.authenticate(name, f"password of {name}", address)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = []
    for count, (name, address) in enumerate(
        [
            ("bob", "192.0.2.66"),  # suspect: the network's last attempt failed
            ("carol", "192.0.2.7"),  # unknown network
            ("dave", "198.51.100.8"),  # known network, arriving last
        ],
        start=1,
    ):
        threads.append(start(lambda n=name, a=address: login(n, a)))
        wait_until(lambda c=count: gate.waiting == c)
    holder.release()
    join_all(threads)
    assert errors == []
    assert hasher.verified == ["password of dave", "password of carol", "password of bob"]


def test_attempts_that_arrive_together_as_a_delay_ends_get_one_guess(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    """Concurrent attempts after a delay are let through one at a time: the first
    holds the delay; the others wait, and the hold ends with the attempt."""
    for _ in range(POLICY.free_per_account):
        throttle.failed("alice", None)
    clock.advance(POLICY.delay(POLICY.free_per_account, POLICY.free_per_account) + 0.001)
    throttle.admit("alice", None)  # let through: it now holds the account
    with pytest.raises(TryLaterError) as second:
        throttle.admit("alice", None)
    assert second.value.retry_after > 0
    throttle.failed("alice", None)  # the first attempt failed: its hold ends...
    with pytest.raises(TryLaterError) as third:
        throttle.admit("alice", None)  # ...and a longer delay begins
    assert third.value.retry_after > second.value.retry_after
