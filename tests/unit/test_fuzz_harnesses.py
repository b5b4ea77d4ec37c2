"""The atheris harnesses under fuzz/ still work (they are run by hand, for hours).

Each harness's one-input function runs over its committed seed corpus
(fuzz/corpus/<target>/) and over a few dozen mutations of it, without atheris: a
harness that rots (an import, a renamed helper, a changed protocol) breaks the build
here rather than on the day someone starts a long run. The seeds must also still reach
what they were made for: deep protocol states, and images the validator accepts.
"""

from __future__ import annotations

import functools
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from imgshare.errors import LocalProtocolError
from imgshare.protocol import MessageType

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
MUTANTS = 40  # per target, on top of the corpus


def load(name: str) -> ModuleType:
    """Import fuzz/<name>.py by path (fuzz/ is no package, nor on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def harness(name: str) -> ModuleType:
    return load(name)


def corpus(target: str) -> list[bytes]:
    files = sorted((FUZZ / "corpus" / target).iterdir())
    return [path.read_bytes() for path in files if path.is_file()]


def mutants(seeds: list[bytes], keep_header: int, count: int = MUTANTS) -> list[bytes]:
    """Bit flips, cuts, insertions and overwrites of the seeds (a fixed random stream),
    leaving the first ``keep_header`` bytes alone so the records' selectors stay valid."""
    rng = random.Random(20240601)
    found = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if len(data) <= keep_header:
                data += rng.randbytes(8)
            at = rng.randrange(keep_header, len(data))
            kind = rng.randrange(4)
            if kind == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del data[at:]
            elif kind == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                data[at : at + 4] = rng.choice([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff"])
        found.append(bytes(data))
    return found


def test_harnesses_do_not_need_atheris(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "atheris", None)  # `import atheris` now fails
    for name in ("fuzz_records", "fuzz_images"):
        module = load(name)  # only main() imports atheris
        assert callable(module.test_one_input)
        with pytest.raises(ImportError):
            module.main()


@pytest.mark.parametrize("target", ["records", "images"])
def test_corpus_is_there_and_small(target: str) -> None:
    seeds = corpus(target)
    assert len(seeds) >= 15, f"fuzz/corpus/{target}: rerun fuzz/make_corpus.py"
    assert sum(map(len, seeds)) < 150_000


def test_records_harness_over_its_corpus() -> None:
    records = harness("fuzz_records")
    seeds = corpus("records")
    outcomes = [records.run_one(data) for data in seeds]
    for data in mutants(seeds, keep_header=3):
        records.test_one_input(data)
    # The honest seeds reach the conversation: events on both sides, after every prefix
    # kind, and the sealed-message form too.
    events_by_kind: dict[tuple[int, int], int] = {}
    for data, (events, _) in zip(seeds, outcomes, strict=True):
        key = (data[0] & 1, (data[0] >> 1) & 3)
        events_by_kind[key] = events_by_kind.get(key, 0) + events
    for side in (0, 1):
        for kind in (records.RAW_AFTER_PREFIX, records.SEALED):
            assert events_by_kind.get((side, kind), 0) > 0, (side, kind, events_by_kind)
    assert sum(events for events, _ in outcomes) >= 40


def sealed_messages(data: bytes) -> list[bytes]:
    """The plaintexts of a sealed-message seed (see fuzz_records.py for the format)."""
    body, found, pos = data[3:], [], 0
    while pos + 2 <= len(body):
        length = int.from_bytes(body[pos : pos + 2], "big")
        found.append(body[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return found


def test_records_corpus_reaches_every_message_parser() -> None:
    """Every sealed message type is in a sealed-message seed, sent to
    the side that receives it; a request the logged-in server gets is accepted."""
    records = harness("fuzz_records")
    reached: dict[int, set[MessageType]] = {0: set(), 1: set()}
    for data in corpus("records"):
        side, kind = data[0] & 1, (data[0] >> 1) & 3
        if kind != records.SEALED:
            continue
        messages = sealed_messages(data)
        reached[side].update(MessageType(m[0]) for m in messages if m)
        if side == 1 and len(messages) == 1 and messages[0][0] < 0x80:
            assert records.run_one(data) == (1, "open"), MessageType(messages[0][0])
    requests = {t for t in MessageType if t < 0x80}
    answers = {t for t in MessageType if t >= 0x80}
    assert requests <= reached[1], requests - reached[1]
    assert answers <= reached[0], answers - reached[0]


@pytest.mark.parametrize(
    ("raised", "caught"),
    [(ValueError("a parser bug"), ValueError), (LocalProtocolError("misuse"), AssertionError)],
)
def test_records_harness_rejects_a_broken_invariant(
    raised: Exception, caught: type[Exception]
) -> None:
    """The harness raises when a connection lets anything but RemoteProtocolError out."""
    records = harness("fuzz_records")
    conn = records.fresh("server")

    def broken() -> object:
        raise raised

    conn.next_event = broken
    with pytest.raises(caught):
        records.feed(conn, [b"\x00\x00\x00\x02\x01\x00"])


def test_images_harness_over_its_corpus() -> None:
    images = harness("fuzz_images")
    seeds = corpus("images")
    verdicts = [images.run_one(data) for data in seeds]
    for data in mutants(seeds, keep_header=0):
        images.test_one_input(data)
    accepted = {info.format for info in verdicts if info is not None}
    assert accepted == {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
    assert any(info is None for info in verdicts)  # and some seeds are refused


def test_images_harness_rejects_a_broken_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness raises when the validator lets an exception other than ImageError out,
    or accepts an image over the policy."""
    images = harness("fuzz_images")
    png = next(data for data in corpus("images") if data.startswith(b"\x89PNG"))

    def leaky(source: object, policy: object) -> object:
        raise OSError("decoder bug")

    monkeypatch.setattr(images, "validate_image", leaky)
    with pytest.raises(OSError, match="decoder bug"):
        images.test_one_input(png)
    monkeypatch.undo()

    tight = images.ImagePolicy(max_pixels=4)  # every seed is bigger than 2x2
    monkeypatch.setattr(images, "POLICY", tight)
    real = images.validate_image
    monkeypatch.setattr(images, "validate_image", lambda source, policy: real(source))
    with pytest.raises(AssertionError, match="too many pixels"):
        images.test_one_input(png)
