#!/usr/bin/env bash
# Installs what the desktop GUI's test needs (tests/gui/test_gui.py): Debian's Xvfb,
# the X server without a screen that the test runs the real Tk window on, and
# python3-tk when the Python that runs the tests has no tkinter (the GUI is Tk, from
# the standard library, which Debian packages apart; docs/client.md, "Desktop GUI").
# Idempotent: does nothing when both are already there. Run as root, or as a user who
# may sudo; `make services` (and so CI) calls it. PYTHON picks the Python to check
# (default: .venv/bin/python if it exists, else python3).
set -euo pipefail

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

packages=()
if ! command -v Xvfb >/dev/null 2>&1; then
    packages+=(xvfb)
fi
if ! "$PYTHON" -c 'import tkinter' >/dev/null 2>&1; then
    packages+=(python3-tk)
fi
if [ "${#packages[@]}" -eq 0 ]; then
    echo "install-xvfb: already installed ($(command -v Xvfb); tkinter imports in $PYTHON)"
    exit 0
fi

. "$(dirname "$0")/apt.sh"
apt_install "${packages[@]}"

if ! command -v Xvfb >/dev/null 2>&1; then
    echo "install-xvfb: the xvfb package is installed, but Xvfb is not on PATH" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import tkinter' >/dev/null 2>&1; then
    # python3-tk serves Debian's own python3; a Python built elsewhere (pyenv, say)
    # needs Tk's headers (tk-dev) when it is built, which apt cannot add afterwards.
    echo "install-xvfb: $PYTHON still cannot import tkinter: it is not Debian's python3;" \
        "rebuild it with tk-dev installed, or make the venv with /usr/bin/python3" >&2
    exit 1
fi
echo "install-xvfb: installed ${packages[*]}"
