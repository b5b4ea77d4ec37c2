"""Connection caps and the minimum transfer rate (``imgshare.server.caps``)."""

from __future__ import annotations

import random
import threading

import pytest

from imgshare.server.caps import ConnectionCaps, TooSlow, TransferMeter

TOO_MANY = "too many connections"
FROM_ADDRESS = "too many connections from this address"
LOGGING_IN = "too many connections logging in"


class FakeConnection:
    """What the caps need of a connection; compared by identity, like the real one."""

    def __init__(
        self, peer: str = "192.0.2.1", *, logging_in: bool = False, failed_logins: int = 0
    ) -> None:
        self.peer = peer
        self.logging_in = logging_in
        self.failed_logins = failed_logins
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1

    def __repr__(self) -> str:
        return f"FakeConnection({self.peer!r})"


def admit(caps: ConnectionCaps, address: str = "192.0.2.1", **kwargs: int) -> FakeConnection:
    """A new connection that the caps must admit without evicting anyone."""
    connection = FakeConnection(address, **kwargs)
    assert caps.acquire(connection, address) == (None, None)
    return connection


def fill_check(caps: ConnectionCaps, total: int, per_address: int) -> None:
    """With nothing open, exactly ``per_address`` fit from one address and exactly
    ``total`` in all: proof that no count leaked."""
    held = []
    for _ in range(per_address):
        held.append(admit(caps, "198.51.100.1"))
        caps.logged_in(held[-1], held[-1].peer)  # stay clear of the login cap
    refusal, _ = caps.acquire(FakeConnection(), "198.51.100.1")
    assert refusal == FROM_ADDRESS
    for index in range(total - per_address):
        connection = FakeConnection(f"203.0.113.{index + 1}")
        assert caps.acquire(connection, connection.peer) == (None, None)
        caps.logged_in(connection, connection.peer)  # stay clear of the login cap
        held.append(connection)
    assert caps.acquire(FakeConnection(), "192.0.2.250") == (TOO_MANY, None)
    for connection in held:
        caps.release(connection, connection.peer)
    assert caps.not_logged_in == 0


# --- total and per-address caps --------------------------------------------------------


def test_total_cap() -> None:
    caps = ConnectionCaps(total=3, per_address=10, unauthenticated=10)
    held = [admit(caps, f"192.0.2.{i}") for i in range(1, 4)]
    extra = FakeConnection("192.0.2.9")
    assert caps.acquire(extra, "192.0.2.9") == (TOO_MANY, None)
    assert caps.not_logged_in == 3  # the refused one is not counted
    caps.release(held[0], "192.0.2.1")
    assert caps.acquire(extra, "192.0.2.9") == (None, None)


def test_per_address_cap() -> None:
    caps = ConnectionCaps(total=100, per_address=2, unauthenticated=100)
    first = admit(caps, "192.0.2.1")
    admit(caps, "192.0.2.1")
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (FROM_ADDRESS, None)
    admit(caps, "192.0.2.2")  # another address has its own count
    admit(caps, "2001:db8::1")
    caps.release(first, "192.0.2.1")
    admit(caps, "192.0.2.1")
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (FROM_ADDRESS, None)


def test_trusted_networks_skip_the_per_address_cap_but_not_the_total() -> None:
    caps = ConnectionCaps(
        total=9, per_address=1, unauthenticated=100, trusted=["127.0.0.0/8", "::1/128", "fe80::/10"]
    )
    for _ in range(3):
        admit(caps, "127.0.0.1")
    for _ in range(2):
        admit(caps, "::1")
    admit(caps, "fe80::1%eth0")
    admit(caps, "fe80::1%eth0")  # a scoped address in a trusted network
    admit(caps, "192.0.2.1")
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (FROM_ADDRESS, None)
    admit(caps, "127.0.0.2")  # 9 open
    assert caps.acquire(FakeConnection(), "127.0.0.1") == (TOO_MANY, None)


def test_nothing_is_trusted_by_default() -> None:
    caps = ConnectionCaps(total=10, per_address=1, unauthenticated=10)
    admit(caps, "127.0.0.1")
    assert caps.acquire(FakeConnection(), "127.0.0.1") == (FROM_ADDRESS, None)


@pytest.mark.parametrize("address", ["not an address", "", "127.0.0.1:80", "::1%"])
def test_unparsable_addresses_are_never_trusted(address: str) -> None:
    caps = ConnectionCaps(total=10, per_address=1, unauthenticated=10, trusted=["0.0.0.0/0"])
    admit(caps, address)
    assert caps.acquire(FakeConnection(), address) == (FROM_ADDRESS, None)


def test_ipv4_mapped_address_is_in_a_trusted_ipv4_network() -> None:
    caps = ConnectionCaps(total=10, per_address=1, unauthenticated=10, trusted=["192.0.2.0/24"])
    admit(caps, "::ffff:192.0.2.7")
    admit(caps, "::ffff:192.0.2.7")


# --- the not-logged-in cap -------------------------------------------------------------


def test_a_full_login_cap_evicts_the_oldest_waiting_connection() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=3)
    first, second, third = (admit(caps) for _ in range(3))
    fourth = FakeConnection()
    assert caps.acquire(fourth, "192.0.2.1") == (None, first)
    assert caps.not_logged_in == 3
    fifth = FakeConnection()
    assert caps.acquire(fifth, "192.0.2.1") == (None, second)
    # The caller aborts the evicted connection; the caps never do it themselves.
    assert first.aborted == second.aborted == 0
    assert third.aborted == 0


def test_squatters_on_one_address_make_room_for_each_other() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=4)
    user = admit(caps, "192.0.2.1")  # the oldest, alone on its address
    squatters = [admit(caps, "203.0.113.9") for _ in range(2)]
    other = admit(caps, "198.51.100.4")
    newcomer = FakeConnection("198.51.100.5")
    assert caps.acquire(newcomer, "198.51.100.5") == (None, squatters[0])
    # Now one waiting per address: the oldest of all goes.
    assert caps.acquire(FakeConnection("198.51.100.6"), "198.51.100.6") == (None, user)
    assert caps.acquire(FakeConnection("198.51.100.7"), "198.51.100.7") == (None, squatters[1])
    assert caps.acquire(FakeConnection("198.51.100.8"), "198.51.100.8") == (None, other)
    assert caps.not_logged_in == 4


def test_a_connection_that_failed_a_login_goes_first() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=4)
    user = admit(caps, "192.0.2.1")  # the oldest
    squatters = [admit(caps, "203.0.113.9") for _ in range(2)]  # the most on one address
    guesser = admit(caps, "198.51.100.4")  # the newest, alone on its address
    guesser.failed_logins = 1
    assert caps.acquire(FakeConnection("198.51.100.5"), "198.51.100.5") == (None, guesser)
    assert caps.acquire(FakeConnection("198.51.100.6"), "198.51.100.6") == (None, squatters[0])
    assert user.aborted == 0


def test_among_failed_logins_the_busiest_address_then_the_oldest_goes() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=5)
    lone = admit(caps, "192.0.2.1", failed_logins=3)  # the oldest, alone
    first = admit(caps, "203.0.113.9", failed_logins=1)
    second = admit(caps, "203.0.113.9", failed_logins=1)
    admit(caps, "203.0.113.9")  # no failure: not a first choice
    innocent = admit(caps, "198.51.100.1")
    assert caps.acquire(FakeConnection("198.51.100.2"), "198.51.100.2") == (None, first)
    assert caps.acquire(FakeConnection("198.51.100.3"), "198.51.100.3") == (None, second)
    assert caps.acquire(FakeConnection("198.51.100.4"), "198.51.100.4") == (None, lone)
    assert innocent.aborted == 0


def test_a_guesser_being_checked_is_not_evicted() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=2)
    user = admit(caps, "192.0.2.1")
    admit(caps, "198.51.100.4", failed_logins=2, logging_in=True)
    assert caps.acquire(FakeConnection("198.51.100.5"), "198.51.100.5") == (None, user)


def test_a_squatting_address_evicts_its_own_first() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=3)
    user = admit(caps, "192.0.2.1")
    first, second = (admit(caps, "203.0.113.9") for _ in range(2))
    assert caps.acquire(FakeConnection("203.0.113.9"), "203.0.113.9") == (None, first)
    assert caps.acquire(FakeConnection("203.0.113.9"), "203.0.113.9") == (None, second)
    assert user.aborted == 0


def test_an_address_whose_connections_all_log_in_is_passed_over() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=3)
    lone = admit(caps, "192.0.2.1")
    for _ in range(2):
        admit(caps, "203.0.113.9", logging_in=True)
    assert caps.acquire(FakeConnection("198.51.100.1"), "198.51.100.1") == (None, lone)


def test_a_logged_in_connection_frees_its_address_place_in_the_login_line() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=3)
    user = admit(caps, "192.0.2.1")
    first = admit(caps, "203.0.113.9")
    second = admit(caps, "203.0.113.9")
    caps.logged_in(first, "203.0.113.9")
    caps.logged_in(second, "203.0.113.9")
    admit(caps, "198.51.100.1")
    admit(caps, "198.51.100.2")
    # Three waiting, one per address: the oldest is the user's.
    assert caps.acquire(FakeConnection("198.51.100.3"), "198.51.100.3") == (None, user)


def test_a_connection_being_checked_is_never_evicted() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=3)
    first = admit(caps)
    second = admit(caps)
    third = admit(caps)
    first.logging_in = True
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, second)
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, third)
    first.logging_in = False  # its check is over, still not logged in: the oldest again
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, first)


def test_when_all_are_logging_in_the_newcomer_is_refused() -> None:
    caps = ConnectionCaps(total=4, per_address=100, unauthenticated=3)
    waiting = [admit(caps, logging_in=True) for _ in range(3)]
    for _ in range(5):  # refusals cost nothing: no place in the total either
        newcomer = FakeConnection()
        assert caps.acquire(newcomer, "192.0.2.1") == (LOGGING_IN, None)
    assert caps.not_logged_in == 3
    waiting[1].logging_in = False
    late = FakeConnection()
    assert caps.acquire(late, "192.0.2.1") == (None, waiting[1])  # 4 open now
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (TOO_MANY, None)


def test_an_evicted_connection_counts_in_the_total_until_released() -> None:
    caps = ConnectionCaps(total=4, per_address=100, unauthenticated=2)
    first = admit(caps)
    second = admit(caps)
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, first)
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, second)
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (TOO_MANY, None)
    caps.release(first, "192.0.2.1")  # its thread ends after the abort
    caps.release(second, "192.0.2.1")
    assert caps.not_logged_in == 2
    assert caps.acquire(FakeConnection(), "192.0.2.1")[0] is None


def test_a_refusal_by_address_evicts_nobody() -> None:
    caps = ConnectionCaps(total=100, per_address=1, unauthenticated=2)
    admit(caps, "192.0.2.1")
    admit(caps, "192.0.2.2")
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (FROM_ADDRESS, None)
    assert caps.not_logged_in == 2


def test_logged_in_frees_a_login_place_but_not_a_total_place() -> None:
    caps = ConnectionCaps(total=3, per_address=100, unauthenticated=2)
    first = admit(caps)
    admit(caps)
    caps.logged_in(first, first.peer)
    assert caps.not_logged_in == 1
    admit(caps)  # a login place was free: nobody evicted
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (TOO_MANY, None)
    caps.release(first, "192.0.2.1")
    # Two waiting (the cap): the next one evicts, it is not refused.
    assert caps.acquire(FakeConnection(), "192.0.2.1")[0] is None


def test_a_logged_in_connection_is_never_evicted() -> None:
    caps = ConnectionCaps(total=100, per_address=100, unauthenticated=1)
    user = admit(caps)
    caps.logged_in(user, user.peer)
    caps.logged_in(user, user.peer)  # twice: harmless
    waiting = admit(caps)
    assert caps.acquire(FakeConnection(), "192.0.2.1") == (None, waiting)


def test_release_frees_every_count() -> None:
    caps = ConnectionCaps(total=2, per_address=1, unauthenticated=1)
    connection = admit(caps, "192.0.2.1")
    caps.release(connection, "192.0.2.1")
    assert caps.not_logged_in == 0
    fill_check(caps, total=2, per_address=1)


def test_counts_never_leak_over_many_cycles() -> None:
    total, per_address = 20, 5
    caps = ConnectionCaps(total=total, per_address=per_address, unauthenticated=6)
    rng = random.Random(1234)
    open_: list[FakeConnection] = []
    addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "198.51.100.7"]
    refusals = {TOO_MANY: 0, FROM_ADDRESS: 0, LOGGING_IN: 0}
    evicted_before: set[FakeConnection] = set()  # kept alive: no id is reused
    for _ in range(5000):
        action = rng.random()
        if action < 0.5 or not open_:
            address = rng.choice(addresses)
            connection = FakeConnection(address, logging_in=rng.random() < 0.3)
            refusal, evicted = caps.acquire(connection, address)
            if refusal is not None:
                refusals[refusal] += 1
                continue
            open_.append(connection)
            if evicted is not None:
                assert evicted in open_ and not evicted.logging_in
                assert evicted not in evicted_before  # out of the line once only
                evicted_before.add(evicted)
                evicted.abort()
        elif action < 0.7:
            chosen = rng.choice(open_)
            caps.logged_in(chosen, chosen.peer)
        elif action < 0.75:
            connection = rng.choice(open_)
            connection.logging_in = not connection.logging_in
        elif action < 0.8:
            rng.choice(open_).failed_logins += 1
        else:
            connection = open_.pop(rng.randrange(len(open_)))
            caps.release(connection, connection.peer)
        assert caps.not_logged_in <= 6
    assert evicted_before and all(refusals.values())  # every path was taken
    for connection in open_:
        caps.release(connection, connection.peer)
    assert caps.not_logged_in == 0
    fill_check(caps, total, per_address)


def test_counts_never_leak_under_threads() -> None:
    caps = ConnectionCaps(total=16, per_address=4, unauthenticated=8)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        address = f"192.0.2.{index % 3}"
        try:
            for round_ in range(400):
                connection = FakeConnection(address)
                refusal, _evicted = caps.acquire(connection, address)
                if refusal is None:
                    if round_ % 2:
                        caps.logged_in(connection, address)
                    caps.release(connection, address)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert caps.not_logged_in == 0
    fill_check(caps, total=16, per_address=4)


# --- TransferMeter ---------------------------------------------------------------------


def test_no_error_while_the_window_is_incomplete() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    for _ in range(3):
        meter.moved(0, 0.25)
    assert meter.time_left() == pytest.approx(0.25)


def test_too_slow_at_the_end_of_a_short_window() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    meter.moved(40, 0.5)
    meter.moved(59, 0.25)
    with pytest.raises(TooSlow, match="fewer than 100 bytes in 1 s"):
        meter.moved(0, 0.25)


def test_too_slow_when_one_wait_overruns_the_window() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    with pytest.raises(TooSlow):
        meter.moved(99, 5.0)


def test_exactly_min_bytes_is_enough() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    meter.moved(50, 0.5)
    meter.moved(50, 0.5)  # window over, 100 bytes: fine
    assert meter.time_left() == 1.0


def test_a_good_window_starts_the_count_again() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    meter.moved(1000, 0.5)
    meter.moved(0, 0.5)  # 1000 bytes in the window: restart
    assert meter.time_left() == 1.0
    meter.moved(0, 0.75)  # the 1000 bytes do not count in the new window
    with pytest.raises(TooSlow):
        meter.moved(99, 0.25)


def test_only_time_waiting_on_the_peer_counts() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    for _ in range(1000):
        meter.moved(0, 0.0)  # the server was busy, the peer was not waited on
    assert meter.time_left() == 1.0
    meter.moved(0, 0.5)
    assert meter.time_left() == 0.5


def test_restart_resets_time_and_bytes() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    meter.moved(99, 0.75)
    meter.restart()
    assert meter.time_left() == 1.0
    meter.moved(0, 0.75)  # would have ended a window without the restart
    with pytest.raises(TooSlow):  # and the 99 bytes from before do not count
        meter.moved(0, 0.25)


def test_time_left_is_never_below_a_millisecond() -> None:
    meter = TransferMeter(min_bytes=100, window=1.0)
    meter.moved(0, 0.9999999)
    assert meter.time_left() == 0.001
    assert TransferMeter(min_bytes=1, window=0.0).time_left() == 0.001
    assert TransferMeter(min_bytes=1, window=0.0005).time_left() == 0.001


def test_zero_minimum_never_raises() -> None:
    meter = TransferMeter(min_bytes=0, window=0.5)
    for _ in range(10):
        meter.moved(0, 0.5)
    assert meter.time_left() == 0.5
