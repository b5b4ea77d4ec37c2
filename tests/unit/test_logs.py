"""Log lines for people and for machines (``imgshare.logs``)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgshare import logs

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def _record(
    message: str = "image received",
    *args: object,
    level: int = logging.INFO,
    name: str = "imgshare.server.service",
    extra: dict[str, object] | None = None,
    exc_info: bool = False,
) -> logging.LogRecord:
    info = sys.exc_info() if exc_info else None
    record = logging.LogRecord(name, level, __file__, 1, message, args, info)
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


@pytest.fixture
def restore_imgshare_logger() -> Iterator[logging.Logger]:
    """``logs.configure`` changes the process-wide ``imgshare`` logger: put it back."""
    logger = logging.getLogger("imgshare")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_fields_helper() -> None:
    assert logs.fields(peer="127.0.0.1:5", user="alice") == {
        "fields": {"peer": "127.0.0.1:5", "user": "alice"}
    }


# --- human -----------------------------------------------------------------------------


def test_human_line_has_time_level_message_and_fields() -> None:
    record = _record(
        "listening on %s:%d", "127.0.0.1", 8443, extra=logs.fields(data="/srv/d", inbox=True)
    )
    line = logs.HumanFormatter().format(record)
    assert re.fullmatch(
        TIME + r" INFO    listening on 127\.0\.0\.1:8443  data=/srv/d inbox=True", line
    ), line


def test_human_line_without_fields_has_no_trailing_space() -> None:
    line = logs.HumanFormatter().format(_record("stopped", level=logging.WARNING))
    assert re.fullmatch(TIME + r" WARNING stopped", line), line


def test_human_time_is_utc_with_milliseconds() -> None:
    record = _record()
    record.created, record.msecs = 1_700_000_000.123456, 123.456
    line = logs.HumanFormatter().format(record)
    assert line.startswith("2023-11-14T22:13:20.123Z ")


def test_human_line_carries_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("internal error", level=logging.ERROR, exc_info=True)
    text = logs.HumanFormatter().format(record)
    first, *rest = text.splitlines()
    assert re.fullmatch(TIME + r" ERROR   internal error", first)
    assert rest[0].startswith("  | Traceback")
    assert rest[-1] == "  | ValueError: boom"


def test_a_traceback_cannot_forge_a_record() -> None:
    forged = "x\n2030-01-01T00:00:00.000Z INFO    login  user=admin\u202e"
    try:
        raise ValueError(forged)
    except ValueError:
        record = _record("internal error", level=logging.ERROR, exc_info=True)
    _, *rest = logs.HumanFormatter().format(record).splitlines()
    assert all(line.startswith("  | ") for line in rest)
    assert "\u202e" not in "".join(rest) and "\\u202e" in "".join(rest)


def test_human_line_cannot_be_forged_by_client_text() -> None:
    forged = "x.png\n2030-01-01T00:00:00.000Z INFO    login  peer=203.0.113.9:1 user=admin"
    formatter = logs.HumanFormatter()
    for record in (
        _record("image received", extra=logs.fields(user="alice", name=forged)),
        _record("client reported error: %s", forged),
    ):
        assert "\n" not in formatter.format(record)


# --- JSON ------------------------------------------------------------------------------


def test_json_line_is_one_object_with_the_fields() -> None:
    record = _record(
        "HMAC of image on server side: %s",
        "ab" * 32,
        extra=logs.fields(user="alice", upload="cd" * 16, size=1234),
    )
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {
        "time": entry["time"],
        "level": "info",
        "logger": "imgshare.server.service",
        "message": "HMAC of image on server side: " + "ab" * 32,
        "user": "alice",
        "upload": "cd" * 16,
        "size": 1234,
    }
    assert re.fullmatch(TIME, entry["time"])


def test_json_turns_other_values_into_strings() -> None:
    record = _record("sweep", extra=logs.fields(path=Path("/srv/x"), report=object, inbox=None))
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["path"] == "/srv/x"
    assert entry["report"] == str(object)
    assert entry["inbox"] is None


def test_json_escapes_newlines_and_carries_the_traceback() -> None:
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        record = _record(
            "oops %s", "a\nb", level=logging.ERROR, exc_info=True, extra=logs.fields(name="x\ny")
        )
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "oops a\nb"
    assert entry["name"] == "x\ny"
    assert entry["level"] == "error"
    assert "RuntimeError: bad" in entry["exception"]


def test_fields_that_are_not_a_dict_are_ignored() -> None:
    record = _record("odd", extra={"fields": ["not", "a", "dict"]})
    assert json.loads(logs.JsonFormatter().format(record))["message"] == "odd"
    assert logs.HumanFormatter().format(record).endswith(" odd")


# --- configure -------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["human", "json"])
def test_configure_sends_imgshare_logs_to_the_stream(
    log_format: str, restore_imgshare_logger: logging.Logger
) -> None:
    stream = io.StringIO()
    logs.configure(log_format, "info", stream=stream)
    logs.configure(log_format, "info", stream=stream)  # again: still one handler
    assert len(restore_imgshare_logger.handlers) == 1
    assert restore_imgshare_logger.propagate is False
    log = logging.getLogger("imgshare.server.network")
    log.debug("too detailed")
    log.info("connection", extra=logs.fields(peer="127.0.0.1:4242", tls="TLSv1.3"))
    log.warning("accept failed: %s", "EMFILE")
    logging.getLogger("somebody.else").warning("not ours")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if log_format == "json":
        first, second = (json.loads(line) for line in lines)
        assert first["message"] == "connection"
        assert (first["peer"], first["tls"], first["level"]) == (
            "127.0.0.1:4242",
            "TLSv1.3",
            "info",
        )
        assert first["logger"] == "imgshare.server.network"
        assert (second["level"], second["message"]) == ("warning", "accept failed: EMFILE")
    else:
        assert re.fullmatch(
            TIME + r" INFO    connection  peer=127\.0\.0\.1:4242 tls=TLSv1\.3", lines[0]
        )
        assert lines[1].endswith("WARNING accept failed: EMFILE")


@pytest.mark.parametrize(
    ("level", "shown"), [("debug", 3), ("info", 2), ("warning", 1), ("error", 0), ("ERROR", 0)]
)
def test_configure_level(level: str, shown: int, restore_imgshare_logger: logging.Logger) -> None:
    stream = io.StringIO()
    logs.configure("human", level, stream=stream)
    log = logging.getLogger("imgshare.server.accounts")
    log.debug("d")
    log.info("i")
    log.warning("w")
    assert len(stream.getvalue().splitlines()) == shown


def test_configure_defaults_to_stderr(
    restore_imgshare_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure()
    logging.getLogger("imgshare.cli").info("hello")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.rstrip().endswith("INFO    hello")
