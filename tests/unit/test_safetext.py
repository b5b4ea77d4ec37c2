"""Client text made safe to show (``imgshare.safetext``) and its use by the log formatters."""

from __future__ import annotations

import json
import logging
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgshare import logs
from imgshare.safetext import escape, safe_filename

HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}
FALLBACK = "download.bin"

#: Characters that must never reach a log line, a terminal or a file name as they are.
TRICKY = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202d",  # LEFT-TO-RIGHT OVERRIDE
    "\u202a",  # LEFT-TO-RIGHT EMBEDDING
    "\u202b",  # RIGHT-TO-LEFT EMBEDDING
    "\u202c",  # POP DIRECTIONAL FORMATTING
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2067",  # RIGHT-TO-LEFT ISOLATE
    "\u2068",  # FIRST STRONG ISOLATE
    "\u2069",  # POP DIRECTIONAL ISOLATE
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u200d",  # ZERO WIDTH JOINER
    "\u2060",  # WORD JOINER
    "\ufeff",  # BOM / ZERO WIDTH NO-BREAK SPACE
    "\u00ad",  # SOFT HYPHEN
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
    "\n",
    "\r",
    "\t",
    "\x1b",  # ESC: ANSI sequences
    "\0",
    "\x7f",  # DEL
    "\x85",  # NEXT LINE (C1)
    "\x9b",  # CSI (C1)
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "\U000e0001",  # LANGUAGE TAG (astral Cf)
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A (ASCII smuggling)
]


def unescape(shown: str) -> str:
    """The inverse of ``escape``, written from its docstring: ``\\\\`` is a backslash,
    ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN`` are code points, anything else is itself.
    Raises ``ValueError`` for a backslash that starts none of these."""
    out: list[str] = []
    i = 0
    widths = {"x": 2, "u": 4, "U": 8}
    while i < len(shown):
        char = shown[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        kind = shown[i + 1 : i + 2]
        if kind == "\\":
            out.append("\\")
            i += 2
        elif kind in widths:
            digits = shown[i + 2 : i + 2 + widths[kind]]
            if not re.fullmatch(r"[0-9a-f]+", digits) or len(digits) != widths[kind]:
                raise ValueError(f"bad escape at {i}: {shown[i : i + 10]!r}")
            out.append(chr(int(digits, 16)))
            i += 2 + widths[kind]
        else:
            raise ValueError(f"lone backslash at {i} in {shown!r}")
    return "".join(out)


def hidden_in(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in HIDDEN]


# --- escape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\u202e", "\\u202e"),
        ("\u202d", "\\u202d"),
        ("\u202c", "\\u202c"),
        ("\u2066", "\\u2066"),
        ("\u2067", "\\u2067"),
        ("\u2068", "\\u2068"),
        ("\u2069", "\\u2069"),
        ("\u200b", "\\u200b"),
        ("\u200d", "\\u200d"),
        ("\ufeff", "\\ufeff"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\n", "\\x0a"),
        ("\r", "\\x0d"),
        ("\x1b", "\\x1b"),
        ("\0", "\\x00"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\x9b", "\\x9b"),
        ("\ud800", "\\ud800"),
        ("\udc00", "\\udc00"),
        ("\U000e0001", "\\U000e0001"),
        ("\\", "\\\\"),
    ],
)
def test_escape_shows_each_hidden_character(char: str, shown: str) -> None:
    assert escape(char) == shown
    assert escape(f"a{char}b") == f"a{shown}b"


@pytest.mark.parametrize("char", TRICKY)
def test_every_tricky_character_is_escaped(char: str) -> None:
    result = escape(f"name{char}.png")
    assert char not in result
    assert hidden_in(result) == []
    assert result.isascii()
    assert unescape(result) == f"name{char}.png"


def test_rtl_override_cannot_disguise_an_extension() -> None:
    disguised = "invoice\u202egnp.exe"  # shows as "invoiceexe.png"
    assert escape(disguised) == "invoice\\u202egnp.exe"


def test_ansi_escape_sequence_cannot_reach_the_terminal() -> None:
    assert escape("\x1b[2J\x1b]0;pwned\x07x.png") == "\\x1b[2J\\x1b]0;pwned\\x07x.png"


def test_newline_and_carriage_return_cannot_forge_a_line() -> None:
    forged = "x.png\r\n2030-01-01T00:00:00.000Z INFO    login  user=admin"
    result = escape(forged)
    assert "\n" not in result and "\r" not in result
    assert result.splitlines() == [result]
    assert result.startswith("x.png\\x0d\\x0a2030")


def test_an_escape_in_the_original_cannot_pass_for_one_of_ours() -> None:
    literal = "a\\u202eb"  # a backslash, "u202e": six visible characters
    override = "a\u202eb"  # one invisible character
    assert escape(literal) == "a\\\\u202eb"
    assert escape(override) == "a\\u202eb"
    assert escape(literal) != escape(override)
    assert unescape(escape(literal)) == literal
    assert unescape(escape(override)) == override


@pytest.mark.parametrize(
    "text",
    [
        "",
        "holiday.jpg",
        "IMG_0001 (copy).JPG",
        "a-b_c.d~e+f=g,h;i'j\"k`l!@#$%^&*()[]{}<>?|",
        "café 東京.jpg",
        "Ünïcödé ñ ß Ω.png",
        "صورة.png",  # Arabic letters are fine: only the controls are not
        "фото.jpeg",
        "\U0001f4f7 camera.png",
        "e\u0301.png",  # a combining accent is visible
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert escape(text) == text


tricky_text = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=()),
        st.sampled_from([*TRICKY, "\\", "u", "x", "U", "0", "2", "e", "f"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(text=tricky_text)
def test_escape_hides_nothing_and_loses_nothing(text: str) -> None:
    result = escape(text)
    assert hidden_in(result) == []
    assert unescape(result) == text  # so two different names never look the same
    if not hidden_in(text) and "\\" not in text:
        assert result == text


# --- safe_filename ---------------------------------------------------------------------


def check_safe(name: str) -> str:
    result = safe_filename(name, FALLBACK)
    assert result
    assert "/" not in result and "\\" not in result and "\0" not in result
    assert not result.startswith(".")
    assert result not in (".", "..")
    assert len(result.encode("utf-8")) <= 255
    assert hidden_in(result) == []
    return result


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\windows\\system32\\evil.dll",
        "C:\\Users\\me\\x.png",
        "a/b\\c/d\\e.png",
        "dir/.bashrc",
        "x\0y.png",
        "\\\\server\\share\\file.png",
        "....//....//x.png",
        "/",
        "\\",
    ],
)
def test_no_path_separator_survives(name: str) -> None:
    check_safe(name)


def test_folder_part_is_dropped() -> None:
    assert check_safe("../../etc/passwd") == "passwd"
    assert check_safe("/srv/photos/holiday.jpg") == "holiday.jpg"
    assert check_safe("a\\b.png") == "a__b.png"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".bashrc", "bashrc"),
        ("..bashrc", "bashrc"),
        ("...png", "png"),
        (". .hidden.png", "hidden.png"),
        ("dir/.ssh", "ssh"),
    ],
)
def test_no_leading_dot(name: str, expected: str) -> None:
    assert check_safe(name) == expected


@pytest.mark.parametrize("name", ["", ".", "..", "...", "   ", " . ", "/", "dir/", "a/..", "x/."])
def test_fallback_when_nothing_usable_is_left(name: str) -> None:
    assert safe_filename(name, FALLBACK) == FALLBACK


def test_ordinary_names_are_kept() -> None:
    assert safe_filename("holiday.jpg", FALLBACK) == "holiday.jpg"
    assert safe_filename("café 東京.jpg", FALLBACK) == "café 東京.jpg"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a" * 300, "a" * 255),
        ("東" * 100, "東" * 85),  # 255 bytes exactly
        ("a" + "東" * 100, "a" + "東" * 84),  # the 85th would need bytes 254..256
        ("ab" + "東" * 100, "ab" + "東" * 84),
        ("\U0001f4f7" * 70, "\U0001f4f7" * 63),  # 4-byte characters: 252 bytes
        ("a" * 255, "a" * 255),
        ("é" * 127 + "x", "é" * 127 + "x"),  # 255 bytes: nothing cut
    ],
)
def test_cut_to_255_bytes_on_a_character_boundary(name: str, expected: str) -> None:
    result = check_safe(name)
    assert result == expected
    assert len(result.encode("utf-8")) <= 255


def test_cut_counts_the_escaped_form() -> None:
    result = check_safe("\u202e" * 100)
    assert len(result.encode("utf-8")) <= 255
    assert "\u202e" not in result
    assert result.startswith("_u202e_u202e")


def test_rtl_override_is_visible_in_the_file_name() -> None:
    disguised = "invoice\u202egnp.exe"  # a viewer shows "invoiceexe.png"
    result = check_safe(disguised)
    assert "\u202e" not in result
    assert "u202e" in result  # the override shows as its code
    assert result.endswith(".exe")  # what the file really is
    assert not result.endswith(".png")


@settings(max_examples=300, deadline=None)
@given(name=tricky_text | st.text(alphabet=st.sampled_from("./\\ a東\u202e\0"), max_size=300))
def test_safe_filename_properties(name: str) -> None:
    check_safe(name)


# --- log formatters --------------------------------------------------------------------


def record(message: str, *args: object, **values: object) -> logging.LogRecord:
    entry = logging.LogRecord(
        "imgshare.server.service", logging.INFO, __file__, 1, message, args, None
    )
    entry.fields = values
    return entry


def test_human_formatter_escapes_format_characters_in_the_message() -> None:
    line = logs.HumanFormatter().format(record("image received: %s", "x\u202egnp.exe"))
    assert "\u202e" not in line
    assert line.endswith("image received: x\\u202egnp.exe")


def test_human_formatter_escapes_format_characters_in_fields() -> None:
    line = logs.HumanFormatter().format(
        record("image received", name="x\u202egnp.exe", user="al\u200bice", note="a\u2028b")
    )
    assert hidden_in(line) == []
    assert line.endswith("  name=x\\u202egnp.exe user=al\\u200bice note=a\\u2028b")


def test_human_formatter_doubles_backslashes_in_client_text() -> None:
    line = logs.HumanFormatter().format(record("got %s", "a\\u202eb", name="c\\x0ad"))
    assert "got a\\\\u202eb" in line
    assert "name=c\\\\x0ad" in line


@pytest.mark.parametrize("text", TRICKY)
def test_json_lines_stay_ascii_and_one_line(text: str) -> None:
    line = logs.JsonFormatter().format(record("got %s", f"x{text}y", name=f"n{text}m"))
    assert line.isascii()
    assert hidden_in(line) == []
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    # Machines get the exact text back: JSON's own escapes, undone by any parser.
    assert entry["message"] == f"got x{text}y"
    assert entry["name"] == f"n{text}m"


def test_json_escapes_the_rtl_override_as_json() -> None:
    line = logs.JsonFormatter().format(record("m", name="x\u202egnp.exe"))
    assert '"name": "x\\u202egnp.exe"' in line
