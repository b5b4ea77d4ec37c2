"""Text from clients made safe to show: in logs, in the terminal, as a file name.

Names are stored exactly as sent; every place that shows one escapes the characters
that could make it lie (docs/security.md, "names"):

* Cc, control characters: a newline in a name would forge a whole log line (CWE-117),
  an ANSI escape would repaint the terminal;
* Cf, format characters: U+202E RIGHT-TO-LEFT OVERRIDE makes ``gnp.exe`` display as
  ``exe.png``; zero-width spaces and joiners and U+FEFF (BOM) hide inside names that
  look identical;
* Zl and Zp (U+2028, U+2029), which break lines in many viewers, and Cs, lone
  surrogates, which are not text at all.

Each becomes a visible ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` escape, and a
backslash is doubled so that an escape in the original cannot pass for one of ours.
"""

from __future__ import annotations

import unicodedata

_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: What a file name made from a shown name may not contain.
_PATH_CHARACTERS = str.maketrans({"/": "_", "\\": "_", "\0": "_"})
_MAX_FILENAME_BYTES = 255


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every hidden or line-breaking character as a visible escape."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, without a per-character walk
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif unicodedata.category(char) in _HIDDEN_CATEGORIES:
            out.append(_escaped(char))
        else:
            out.append(char)
    return "".join(out)


def safe_filename(name: str, fallback: str) -> str:
    """A file name to write ``name`` under, in a folder the user chose.

    The escaped name (so it shows what it really is), with no folder part, no path
    separator and no leading dot, cut to 255 bytes on a character boundary; when
    nothing usable is left, ``fallback``.
    """
    shown = escape(name.rsplit("/", 1)[-1]).translate(_PATH_CHARACTERS).lstrip(". ")
    shown = shown.encode("utf-8")[:_MAX_FILENAME_BYTES].decode("utf-8", "ignore").rstrip(" ")
    return shown or fallback
