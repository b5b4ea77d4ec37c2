"""The audit trail's writer: events are queued by requests and written in batches."""

from __future__ import annotations

import logging
import time

import pytest

from imgshare.server.audit import AuditTrail
from imgshare.store.catalog import SQLCatalog


def test_queued_events_are_written_within_the_interval(catalog: SQLCatalog) -> None:
    trail = AuditTrail(catalog, interval=0.05)
    try:
        for number in range(3):
            trail.record("login", "alice", "192.0.2.1", 1000 + number, method="token")
        deadline = time.monotonic() + 5
        while len(catalog.audit_events()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        events = catalog.audit_events()
        assert [(e.event, e.time_ms, e.detail) for e in events] == [
            ("login", 1000 + n, {"method": "token"}) for n in range(3)
        ]
    finally:
        trail.close()


def test_flush_writes_at_once_and_close_writes_the_rest(catalog: SQLCatalog) -> None:
    trail = AuditTrail(catalog, interval=3600)  # only flush and close write
    trail.record("token_created", "alice", None, 1, token_id=7)
    assert catalog.audit_events() == []
    trail.flush()
    assert [e.event for e in catalog.audit_events()] == ["token_created"]
    trail.record("token_revoked", "alice", None, 2, token_id=7)
    trail.close()
    assert [e.event for e in catalog.audit_events()] == ["token_created", "token_revoked"]
    with pytest.raises(Exception, match="closed"):
        trail.record("login", "alice", None, 3)


def test_a_failing_catalog_loses_the_batch_but_not_the_request(
    catalog: SQLCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    trail = AuditTrail(catalog, interval=3600)
    trail.record("login", "alice", None, 1)
    catalog.close()  # every write now fails
    with caplog.at_level(logging.ERROR, logger="imgshare.server.audit"):
        trail.flush()  # logs, does not raise
    assert "1 audit event(s) not recorded" in caplog.text
