"""The spec and the code agree: every table in docs/protocol.md is read and compared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imgshare.protocol import constants as k
from imgshare.protocol import events as ev
from imgshare.protocol.connection import Limits
from imgshare.protocol.messages import MESSAGE_TYPE_OF
from imgshare.protocol.state import TRANSITIONS, Role, State

SPEC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """Text of the section whose heading contains ``title``, up to the next heading."""
    match = re.search(rf"^#+ [^\n]*{re.escape(title)}[^\n]*\n(.*?)(?=^#+ )", SPEC, re.M | re.S)
    assert match, f"spec has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-\s|]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # drop the header row


def code_table(text: str) -> dict[str, int]:
    return {
        row[1]: int(row[0], 0)
        for row in table_rows(text)
        if re.match(r"^(0x)?[0-9A-Fa-f]+$", row[0])
    }


@pytest.mark.parametrize(
    ("title", "enum"),
    [
        ("3. Records", k.RecordType),
        ("6. Sealed messages", k.MessageType),
        ("8. Errors", k.ErrorCode),
    ],
)
def test_code_tables_match_enums(title: str, enum: type[k.RecordType]) -> None:
    text = section(title)
    first_table = text[text.index("| code") :]
    assert code_table(first_table) == {member.name: int(member) for member in enum}


def test_groups_and_signature_schemes_match() -> None:
    text = section("4.1 Messages")
    groups = text[text.index("Groups") :]
    schemes = text[text.index("Signature schemes") :]
    assert {n: c for n, c in code_table(groups).items() if n in k.Group.__members__} == {
        g.name: int(g) for g in k.Group
    }
    assert {n: c for n, c in code_table(schemes).items() if n in k.SignatureScheme.__members__} == {
        s.name: int(s) for s in k.SignatureScheme
    }


def test_limits_table_matches_constants() -> None:
    rows = {row[0]: row[1] for row in table_rows(section("5. Limits"))}
    for name in (
        "MIN_CHUNK_SIZE",
        "MAX_CHUNK_SIZE",
        "DEFAULT_CHUNK_SIZE",
        "MAX_NAME_BYTES",
        "MAX_USERNAME_BYTES",
        "MAX_PASSWORD_BYTES",
        "MAX_TOKEN_BYTES",
        "MAX_MESSAGE_TEXT_BYTES",
        "MAX_LIST_ENTRIES",
        "MAX_RETRY_AFTER_MS",
    ):
        assert int(rows[name].split()[0]) == getattr(k, name), name
    limits = Limits()
    assert (
        limits.max_handshake_record_size == 16 * 1024
        and rows["max_handshake_record_size"] == "16 KiB"
    )
    assert limits.max_record_size == (1 << 20) + 80 and rows["max_record_size"].startswith(
        "1 MiB + 80"
    )
    assert limits.max_image_size == 256 << 20 and rows["max_image_size"].startswith("256 MiB")


def test_labels_and_contexts_are_the_specs() -> None:
    schedule = section("4.3 Key schedule")
    for label in (
        k.LABEL_C2S_KEY,
        k.LABEL_S2C_KEY,
        k.LABEL_CLIENT_FINISHED,
        k.LABEL_SERVER_FINISHED,
        k.LABEL_SESSION_ID,
    ):
        assert f'key("{label.decode()}")' in schedule
    assert f'"{k.LABEL_PREFIX.decode()}" || label' in schedule
    assert f'"{k.HANDSHAKE_SIGNATURE_CONTEXT.decode()}"' in schedule
    assert f'"{k.RECEIPT_SIGNATURE_CONTEXT.decode()}"' in section("7.5 Receipt")
    assert f'"{(k.LABEL_PREFIX + k.LABEL_IMAGE_HMAC).decode()}"' in section("7.4 Image HMAC")
    assert k.SIGNATURE_PAD == b" " * 64 and "0x20 \u00d7 64" in schedule
    assert k.MAGIC.decode() in section("4.1 Messages")


def test_state_table_matches_transitions() -> None:
    names = {m.name: m for m in k.MessageType}
    event_of = {v: e for e, v in MESSAGE_TYPE_OF.items()}
    states = {s.value: s for s in State}
    spec_rows = set()
    for state, sender, message, following in table_rows(section("9. State machine")):
        role = Role.CLIENT if sender == "C" else Role.SERVER
        event = ev.Chunk if message == "CHUNK" else event_of[names[message]]
        spec_rows.add((states[state], role, event, states[following.split(" (")[0]]))
    code_rows = {(s, r, e, n) for (s, r, e), n in TRANSITIONS.items()}
    assert spec_rows == code_rows
