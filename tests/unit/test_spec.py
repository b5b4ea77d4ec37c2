"""The spec and the code agree: every table in docs/protocol.md is read and compared.

The message layouts of section 6 and the field tables of section 7 are run as a small
encoder and must give the bytes the code sends; the worked example (section 6.5) must
be the bytes the code seals; the name rules, token forms and server defaults the spec
quotes must be the server's.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imgshare.protocol import codec, keys
from imgshare.protocol import constants as k
from imgshare.protocol import events as ev
from imgshare.protocol.connection import Limits, record_header
from imgshare.protocol.messages import MESSAGE_TYPE_OF, encode_message, parse_message
from imgshare.protocol.state import TRANSITIONS, Role, State
from imgshare.protocol.stream import UploadHeader
from imgshare.server.accounts import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, USERNAME_RE
from imgshare.server.config import ServerSettings
from imgshare.server.credentials import INVITE_PREFIX, TOKEN_PREFIX

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
            # Cells are split on single bars: `a || b` inside a cell is one cell.
            cells = re.split(r"(?<!\|)\|(?!\|)", line.strip()[1:-1])
            rows.append([cell.strip() for cell in cells])
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
        "MAX_TOKEN_NAME_BYTES",
        "MAX_PAGE_ENTRIES",
        "MAX_THUMBNAIL_BYTES",
        "MAX_MEDIA_TYPE_BYTES",
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
    thumbnail_label = (k.LABEL_PREFIX + k.LABEL_THUMBNAIL_KEY).decode()
    assert f'"{thumbnail_label}"' in section("7.11 Thumbnails")
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


def test_request_answer_table_matches_transitions() -> None:
    """Section 6.1: each request's first answer is the one the state table expects."""
    names = {m.name: m for m in k.MessageType}
    event_of = {v: e for e, v in MESSAGE_TYPE_OF.items()}
    answer_of = {
        state: event for (state, role, event), _ in TRANSITIONS.items() if role is Role.SERVER
    }
    requests = {event for (state, role, event) in TRANSITIONS if state is State.IDLE}
    seen = set()
    for cell, answers in table_rows(section("6.1 Requests and their answers")):
        first_answer = event_of[names[re.findall(r"[A-Z_]{2,}", answers)[0]]]
        for name in cell.split(", "):
            request = event_of[names[name]]
            seen.add(request)
            assert answer_of[TRANSITIONS[(State.IDLE, Role.CLIENT, request)]] is first_answer
    assert seen == requests


def test_message_table_senders_match_roles() -> None:
    text = section("6. Sealed messages")
    rows = table_rows(text[text.index("| code") :])
    senders = {row[1]: row[2] for row in rows}
    by_role = {event: role for (_, role, event) in TRANSITIONS}
    for event, message in MESSAGE_TYPE_OF.items():
        role = by_role.get(event)
        if role is not None:
            assert senders[message.name] == role.value, message.name
    assert senders["ERROR"] == "both" and senders["UPLOAD_RESUME"] == "client"


# --- the field layouts of section 6, run as a tiny encoder ----------------------------

Values = dict[str, object]

_PARENTHETICAL = re.compile(r"\s*\((?!\d+\)|rest\))[^)]*\)")
_INTS = {"u8": codec.u8, "u16": codec.u16, "u32": codec.u32, "u64": codec.u64}


def _layout_bytes(layout: str, values: Values, entries: dict[str, str]) -> bytes:
    """Encode ``values`` as a spec layout says: `u16 code || var8 name || id (16)`..."""
    out = b""
    for raw in layout.split("||"):
        part = _PARENTHETICAL.sub("", raw).strip()
        if match := re.fullmatch(r"(u8|u16|u32|u64) (\w+)", part):
            value = values[match[2]]
            assert isinstance(value, int)
            out += _INTS[match[1]](value)
        elif match := re.fullmatch(r"(var8|var16) (\w+)", part):
            value = values[match[2]]
            data = value.encode() if isinstance(value, str) else value
            assert isinstance(data, bytes)
            out += (codec.var8 if match[1] == "var8" else codec.var16)(data)
        elif match := re.fullmatch(r"(\w+) \((\d+)\)", part):
            value = values[match[1]]
            assert isinstance(value, bytes) and len(value) == int(match[2]), part
            out += value
        elif match := re.fullmatch(r"([\w ]+) \(rest\)|(\w+)", part):
            value = values[(match[1] or match[2]).replace(" ", "_")]
            assert isinstance(value, bytes), part
            out += value
        elif match := re.fullmatch(r"count \u00d7 (\w+) entry", part):
            items = values["entries"]
            assert isinstance(items, list)
            out += b"".join(_layout_bytes(entries[match[1]], item, entries) for item in items)
        else:
            raise AssertionError(f"the test cannot read the field {part!r}")
    return out


def _entry_layouts() -> dict[str, str]:
    text = section("6. Sealed messages")
    block = text[text.index("image entry =") :].split("```")[0]
    block = re.sub(r"#[^\n]*", "", block)
    return {
        m[1]: " ".join(m[2].split())
        for m in re.finditer(r"(\w+) entry = (.*?)(?=\n\w+ entry =|\Z)", block, re.S)
    }


def _message_layouts() -> dict[str, list[str]]:
    text = section("6. Sealed messages")
    return {
        row[1]: re.findall(r"`([^`]+)`", row[3]) if row[3] != "empty" else []
        for row in table_rows(text[text.index("| code") :])
        if not row[3].startswith("reserved")
    }


_ID = bytes.fromhex("5f2d8a0c41b7e9d3a6c0f18e7b294d35")
_KEY, _MAC = bytes(range(32)), bytes(range(32, 64))
_HEADER = UploadHeader(bytes(range(16)), bytes(7), 4096, 5000, "cat.png")
_RECEIPT = ev.ReceiptBody(_ID, bytes(range(16)), 5000, _MAC, bytes(32), 1_700_000_000_000, "bob")
_ENTRY = ev.ImageEntry(_ID, 5000, 1_700_000_000_000, _MAC, "alice", "cat.png")
_ENTRY_VALUES: Values = {
    "image_id": _ID,
    "size": 5000,
    "created_ms": 1_700_000_000_000,
    "hmac": _MAC,
    "owner": "alice",
    "name": "cat.png",
}
_EXPIRES = 1_767_225_600_000

#: One event of every sealed message, and its fields by the spec's names.
SAMPLES: dict[k.MessageType, tuple[ev.Event, Values]] = {
    k.MessageType.LOGIN: (ev.Login("alice", "pw"), {"username": "alice", "password": "pw"}),
    k.MessageType.REGISTER: (
        ev.Register("carol", "pw", b"imgshare-invite-x"),
        {"username": "carol", "password": "pw", "invitation": b"imgshare-invite-x"},
    ),
    k.MessageType.TOKEN_LOGIN: (ev.TokenLogin(b"imgshare-token-x"), {"token": b"imgshare-token-x"}),
    k.MessageType.CERT_LOGIN: (ev.CertLogin(), {}),
    k.MessageType.PASSWD: (
        ev.Passwd("old", "new", True),
        {"old_password": "old", "new_password": "new", "revoke_tokens": 1},
    ),
    k.MessageType.TOKEN_CREATE: (
        ev.TokenCreate("laptop", _EXPIRES),
        {"name": "laptop", "expires_ms": _EXPIRES},
    ),
    k.MessageType.TOKEN_LIST: (ev.TokenList(), {}),
    k.MessageType.TOKEN_REVOKE: (ev.TokenRevoke(7), {"token_id": 7}),
    k.MessageType.INFO: (ev.Info(), {}),
    k.MessageType.SERVER_INFO: (
        ev.ServerInfo(256 << 20, 1_048_656, 100_000_000, k.Registration.INVITE, 5),
        {
            "max_image_size": 256 << 20,
            "max_record_size": 1_048_656,
            "max_pixels": 100_000_000,
            "registration": 1,
            "max_login_failures": 5,
        },
    ),
    k.MessageType.UPLOAD_BEGIN: (
        ev.UploadBegin(_HEADER, _KEY),
        {"content_key": _KEY, "upload_header": _HEADER.encode()},
    ),
    k.MessageType.UPLOAD_END: (ev.UploadEnd(_MAC), {"hmac": _MAC}),
    k.MessageType.UPLOAD_RESUME: (
        ev.UploadResume(_HEADER, _KEY),
        {"content_key": _KEY, "upload_header": _HEADER.encode()},
    ),
    k.MessageType.THUMBNAIL: (ev.Thumbnail(_ID), {"image_id": _ID}),
    k.MessageType.THUMBNAIL_DATA: (
        ev.ThumbnailData(_ID, 256, 192, "image/jpeg", b"\xff\xd8 jpeg bytes"),
        {
            "image_id": _ID,
            "width": 256,
            "height": 192,
            "media_type": "image/jpeg",
            "length": 13,
            "data": b"\xff\xd8 jpeg bytes",
        },
    ),
    k.MessageType.DOWNLOAD: (ev.Download(_ID), {"image_id": _ID}),
    k.MessageType.LIST: (ev.ListImages(), {}),
    k.MessageType.SHARE: (
        ev.Share(_ID, "bob", _EXPIRES),
        {"image_id": _ID, "username": "bob", "expires_ms": _EXPIRES},
    ),
    k.MessageType.DELETE: (ev.Delete(_ID), {"image_id": _ID}),
    k.MessageType.UNSHARE: (ev.Unshare(_ID, "bob"), {"image_id": _ID, "username": "bob"}),
    k.MessageType.SHARES: (ev.Shares(_ID), {"image_id": _ID}),
    k.MessageType.LIST_PAGE: (
        ev.ListPage(k.ListScope.SHARED_WITH_ME, 1_700_000_000_000, _ID, 50),
        {"scope": 1, "after_ms": 1_700_000_000_000, "after_id": _ID, "limit": 50},
    ),
    k.MessageType.OK: (ev.Ok(), {}),
    k.MessageType.LOGIN_OK: (ev.LoginOk("alice"), {"username": "alice"}),
    k.MessageType.TOKEN: (
        ev.Token(7, b"imgshare-token-x", _EXPIRES),
        {"token_id": 7, "token": b"imgshare-token-x", "expires_ms": _EXPIRES},
    ),
    k.MessageType.TOKENS: (
        ev.Tokens((ev.TokenInfo(7, "laptop", 1, _EXPIRES, 0),)),
        {
            "count": 1,
            "entries": [
                {
                    "token_id": 7,
                    "name": "laptop",
                    "created_ms": 1,
                    "expires_ms": _EXPIRES,
                    "last_used_ms": 0,
                }
            ],
        },
    ),
    k.MessageType.UPLOAD_READY: (ev.UploadReady(3), {"next_chunk": 3}),
    k.MessageType.RECEIPT: (
        ev.Receipt(_RECEIPT, 0x0403, b"signature"),
        {"receipt": _RECEIPT.encode(), "scheme": 0x0403, "signature": b"signature"},
    ),
    k.MessageType.DOWNLOAD_BEGIN: (
        ev.DownloadBegin(_ID, _HEADER, _KEY),
        {"content_key": _KEY, "image_id": _ID, "upload_header": _HEADER.encode()},
    ),
    k.MessageType.DOWNLOAD_END: (ev.DownloadEnd(_MAC), {"hmac": _MAC}),
    k.MessageType.IMAGE_LIST: (
        ev.ImageList((_ENTRY, _ENTRY)),
        {"count": 2, "entries": [_ENTRY_VALUES, _ENTRY_VALUES]},
    ),
    k.MessageType.SHARE_LIST: (
        ev.ShareList(_ID, (ev.ShareInfo("bob", 1, 0), ev.ShareInfo("carol", 2, _EXPIRES))),
        {
            "image_id": _ID,
            "count": 2,
            "entries": [
                {"username": "bob", "granted_ms": 1, "expires_ms": 0},
                {"username": "carol", "granted_ms": 2, "expires_ms": _EXPIRES},
            ],
        },
    ),
    k.MessageType.IMAGE_PAGE: (
        ev.ImagePage((_ENTRY,), more=True),
        {"more": 1, "count": 1, "entries": [_ENTRY_VALUES]},
    ),
    k.MessageType.ERROR: (
        ev.Error(k.ErrorCode.NOT_FOUND, "no such image"),
        {"code": 13, "fatal": 0, "message": "no such image"},
    ),
}


def test_samples_cover_every_message() -> None:
    assert set(SAMPLES) == set(k.MessageType)  # none is reserved any more
    assert set(_message_layouts()) == {m.name for m in k.MessageType}


@pytest.mark.parametrize("message", list(SAMPLES), ids=lambda m: m.name)
def test_message_layout_is_what_the_code_sends(message: k.MessageType) -> None:
    event, values = SAMPLES[message]
    layout = _message_layouts()[message.name]
    expected = bytes((message,)) + (
        _layout_bytes(layout[0], values, _entry_layouts()) if layout else b""
    )
    assert encode_message(event) == expected
    assert parse_message(expected) == event


def test_try_later_layout_has_the_retry_field() -> None:
    first, retry = _message_layouts()["ERROR"]
    values: Values = {"code": 25, "fatal": 0, "message": "busy", "retry_after_ms": 1500}
    entries = _entry_layouts()
    expected = (
        b"\xff" + _layout_bytes(first, values, entries) + _layout_bytes(retry, values, entries)
    )
    event = ev.Error(k.ErrorCode.TRY_LATER, "busy", retry_after_ms=1500)
    assert encode_message(event) == expected


def test_list_scopes_match() -> None:
    assert code_table(section("7.7 Listing")) == {s.name: int(s) for s in k.ListScope}


# --- the worked example (section 6.5) ----------------------------------------------------


def example_blocks() -> dict[str, str]:
    """``name = hex`` lines of the worked example's code blocks, continuations joined,
    comments (``# ...``) dropped."""
    values: dict[str, str] = {}
    name = ""
    for block in re.findall(r"```\n(.*?)```", section("6.5 Worked example"), re.S):
        for line in block.splitlines():
            line = line.split("#")[0].rstrip()
            if match := re.match(r"^(\w+)\s*=\s*(.*)$", line):
                name = match[1]
                values[name] = match[2]
            elif line.strip():
                values[name] += " " + line.strip()
    return {key: "".join(value.split()) for key, value in values.items()}


def test_worked_example_is_what_the_code_sends() -> None:
    example = example_blocks()
    share = ev.Share(bytes.fromhex("5f2d8a0c41b7e9d3a6c0f18e7b294d35"), "bob", 1767225600000)
    plaintext = encode_message(share)
    assert bytes.fromhex(example["plaintext"]) == plaintext
    assert parse_message(plaintext) == share
    assert "5f2d8a0c41b7e9d3a6c0f18e7b294d35" in section("6.5 Worked example")
    header = record_header(k.RecordType.SEALED, len(plaintext) + k.TAG_SIZE)
    assert bytes.fromhex(example["header"]) == header
    key, sequence = bytes.fromhex(example["c2s_key"]), int(example["sequence"])
    nonce = bytes(4) + sequence.to_bytes(8, "big")
    assert bytes.fromhex(example["nonce"]) == nonce
    cipher = keys.SessionCipher(key)
    for _ in range(sequence):  # the records sent before it
        cipher.seal(b"earlier", b"header")
    record = header + cipher.seal(plaintext, header)
    assert bytes.fromhex(example["record"]) == record
    # And by reference code, straight from the spec's definition of a SEALED record.
    assert record == header + AESGCM(key).encrypt(nonce, plaintext, header)
    assert len(record) == 50 and int.from_bytes(record[:4], "big") == 46
    error = ev.Error(k.ErrorCode.TRY_LATER, "busy", retry_after_ms=1500)
    assert bytes.fromhex(example["error"]) == encode_message(error)


# --- names, credentials and the server's defaults ------------------------------------------


def test_user_name_rule_is_the_servers() -> None:
    text = section("6.4 Names and other text")
    assert f"`{USERNAME_RE.pattern}`" in text
    assert f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH:,} characters" in text
    for name in ("alice", "a", "b0b.x_y-z", "9" * 32):
        assert USERNAME_RE.fullmatch(name)
    for name in ("", "Alice", "alice\n", "-alice", "a" * 33, "al ice", "ålice"):
        assert not USERNAME_RE.fullmatch(name)


def test_token_and_invitation_forms() -> None:
    text = section("6.3 Accounts")
    assert f"`{TOKEN_PREFIX.decode()}`" in text and f"`{INVITE_PREFIX}`" in text
    token_length = len(TOKEN_PREFIX) + len(base64.urlsafe_b64encode(bytes(32)).rstrip(b"="))
    assert f"{token_length} ASCII bytes" in text
    assert token_length <= k.MAX_TOKEN_BYTES


def test_server_defaults_a_client_meets() -> None:
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    rows = {row[0]: row[1] for row in table_rows(section("5. Limits"))}
    assert rows["max_login_failures"] == str(defaults["max_login_failures"])
    assert rows["login_timeout"] == f"{defaults['login_timeout']:g} s"
    assert rows["idle_timeout"] == f"{defaults['idle_timeout']:g} s"
    assert rows["registrations_per_address"] == f"{defaults['registrations_per_address']} per hour"
    transfer = f"{defaults['min_transfer_bytes'] // 1024} KiB per {defaults['transfer_window']:g} s"
    assert rows["min_transfer_bytes"] == transfer
    assert f"the {defaults['max_login_failures']}th by default" in section("6.2 Logging in")


def test_plus_80_is_explained() -> None:
    text = " ".join(section("5. Limits").split())
    limit = Limits().max_record_size
    assert limit == k.MAX_CHUNK_SIZE + k.TAG_SIZE + 64
    assert f"{limit:,}" in text
    largest_chunk_record = 1 + k.MAX_CHUNK_SIZE + k.TAG_SIZE
    assert f"{largest_chunk_record:,}" in text and f"{limit - largest_chunk_record} bytes" in text


@pytest.mark.parametrize(
    ("title", "encoded", "values"),
    [
        (
            "7.1 Upload header",
            _HEADER.encode(),
            {
                "version": 1,
                "upload_id": _HEADER.upload_id,
                "nonce_prefix": _HEADER.nonce_prefix,
                "chunk_size": _HEADER.chunk_size,
                "size": _HEADER.size,
                "name": _HEADER.name,
            },
        ),
        (
            "7.5 Receipt",
            _RECEIPT.encode(),
            {
                "version": 1,
                "image_id": _RECEIPT.image_id,
                "upload_id": _RECEIPT.upload_id,
                "size": _RECEIPT.size,
                "hmac": _RECEIPT.hmac,
                "header_sha256": _RECEIPT.header_sha256,
                "server_time": _RECEIPT.server_time_ms,
                "username": _RECEIPT.username,
            },
        ),
    ],
)
def test_field_tables_are_what_the_code_encodes(title: str, encoded: bytes, values: Values) -> None:
    """The `field | size` tables of the upload header and the receipt, field by field."""
    parts = []
    for field, size, *_ in table_rows(section(title)):
        parts.append(f"{field} ({size})" if size.isdigit() else f"{size} {field}")
    assert _layout_bytes(" || ".join(parts), values, {}) == encoded


def test_resume_answers_are_the_servers() -> None:
    """Section 7.10's table names the answers the server gives an UPLOAD_RESUME."""
    text = section("7.10 Resuming an upload")
    answers = {row[0].split(",")[0] for row in table_rows(text)}
    assert answers == {"UPLOAD_READY", "NOT_FOUND", "TRY_LATER"}
    assert "upload_sync_bytes" in text and "resume_for" in text
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    rows = {row[0]: row[1] for row in table_rows(section("5. Limits"))}
    assert rows["upload_sync_bytes"] == f"{defaults['upload_sync_bytes'] >> 20} MiB"
    assert rows["resume_for"] == f"{defaults['resume_for']:g} s"
