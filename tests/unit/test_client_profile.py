"""The login profile (``imgshare.client.profile``) and the duration parser
(``imgshare.client.duration``): real files in ``tmp_path``, real modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imgshare import pki
from imgshare.client import profile as profiles
from imgshare.client.duration import MAX_DURATION, expires_at, parse_duration
from imgshare.errors import ConfigError

# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43_200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("1d12h", 129_600),
        (" 1h 30m ", 5400),
        ("7D", 604_800),
        ("36500d", MAX_DURATION),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no duration given"),
        ("7", "'7' is not a duration"),
        ("d", "'d' is not a duration"),
        ("7x", "'7x' is not a duration"),
        ("1.5h", "'1.5h' is not a duration"),
        ("-3d", "'-3d' is not a duration"),
        ("7d junk", "'7d junk' is not a duration"),
        ("0s", "no time at all"),
        ("0d0h", "no time at all"),
        ("36501d", "too long"),
        ("99999999999999999999w", "too long"),
    ],
)
def test_bad_durations_say_what_a_duration_is(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert says in message
    if "is not a duration" in says or "no duration" in says:
        assert "e.g. 90s, 30m, 12h, 7d" in message


def test_expires_at_is_milliseconds_from_now() -> None:
    assert expires_at(90, now=1_000.0) == 1_090_000
    assert expires_at(1, now=0.5) == 1500


# --- where the profile lives ------------------------------------------------------------------


def test_imgshare_config_wins(tmp_path: Path) -> None:
    env = {"IMGSHARE_CONFIG": str(tmp_path / "p.json"), "XDG_CONFIG_HOME": "/elsewhere"}
    assert profiles.default_path(env) == tmp_path / "p.json"


def test_xdg_config_home_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert profiles.default_path(env) == tmp_path / "xdg" / "imgshare" / "profile.json"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".config" / "imgshare" / "profile.json"
    assert profiles.default_path({}) == expected
    # a relative XDG_CONFIG_HOME is ignored, as the XDG spec says
    assert profiles.default_path({"XDG_CONFIG_HOME": "relative"}) == expected
    assert profiles.default_path({"IMGSHARE_CONFIG": ""}) == expected


# --- save and load ------------------------------------------------------------------------------


@pytest.fixture
def ca_pem(pki_paths: pki.CertificatePaths) -> str:
    return pki_paths.ca_cert.read_text()


def _profile(ca_pem: str, **changes: object) -> profiles.Profile:
    fields: dict[str, object] = {
        "server": "localhost:8443",
        "ca_pem": ca_pem,
        "user": "alice",
        "token": "imgshare-token-secret",
        "token_id": 7,
        "token_expires_ms": 1_900_000_000_000,
    }
    fields.update(changes)
    return profiles.Profile(**fields)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_and_load_round_trip(tmp_path: Path, ca_pem: str) -> None:
    path = tmp_path / "config" / "imgshare" / "profile.json"
    saved = _profile(ca_pem)
    assert profiles.save(saved, path) == path
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert profiles.load(path) == saved
    assert len(saved.ca_certificates()) == 1
    body = json.loads(path.read_text())
    assert body["version"] == profiles.PROFILE_VERSION
    assert "password" not in json.dumps(body)
    # no temp file left behind, and the token never shows in a repr
    assert sorted(p.name for p in path.parent.iterdir()) == ["profile.json"]
    assert "imgshare-token-secret" not in repr(saved)


def test_save_replaces_atomically_and_tightens_the_mode(tmp_path: Path, ca_pem: str) -> None:
    path = tmp_path / "profile.json"
    path.write_text("old")
    path.chmod(0o644)
    profiles.save(_profile(ca_pem).without_token(), path)
    assert _mode(path) == 0o600
    loaded = profiles.load(path)
    assert loaded is not None
    assert (loaded.token, loaded.token_id, loaded.user) == (None, None, "alice")


def test_the_default_folder_is_made_private(
    tmp_path: Path, ca_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGSHARE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "imgshare").mkdir(mode=0o755)
    (tmp_path / "imgshare").chmod(0o755)
    path = profiles.save(_profile(ca_pem))
    assert path == tmp_path / "imgshare" / "profile.json"
    assert _mode(path.parent) == 0o700
    assert profiles.load() == _profile(ca_pem)


def test_no_profile_is_none(tmp_path: Path) -> None:
    assert profiles.load(tmp_path / "absent.json") is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_profile_others_can_reach_is_refused(tmp_path: Path, ca_pem: str, mode: int) -> None:
    path = profiles.save(_profile(ca_pem), tmp_path / "profile.json")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        profiles.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{", "is not valid JSON (line 1, column 2)"),
        ("[]", "is not a JSON object"),
        ('{"version": 2}', "has version 2"),
        ('{"version": 1}', "is damaged ('server' is missing or not a str)"),
        (
            '{"version": 1, "server": "h:1", "ca_pem": "nope", "user": "a"}',
            "is damaged (the profile's CA certificate does not load)",
        ),
        (b"\xff\xfe", "is not UTF-8 text"),
    ],
)
def test_a_bad_profile_names_the_file_and_what_to_do(
    tmp_path: Path, content: str | bytes, says: str
) -> None:
    path = tmp_path / "profile.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode() if isinstance(content, str) else content)
    os.close(fd)
    with pytest.raises(ConfigError) as caught:
        profiles.load(path)
    message = str(caught.value)
    assert f"the profile {path} {says}" in message
    assert "imgshare login" in message


def test_a_token_without_its_id_is_damage(tmp_path: Path, ca_pem: str) -> None:
    path = profiles.save(_profile(ca_pem, token_id=None), tmp_path / "profile.json")
    with pytest.raises(ConfigError, match="a token without its id"):
        profiles.load(path)


def test_a_folder_is_not_a_profile(tmp_path: Path) -> None:
    folder = tmp_path / "profile.json"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="is not a regular file"):
        profiles.load(folder)


def test_saving_where_no_folder_can_be_made(tmp_path: Path, ca_pem: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"cannot make the folder {blocker}/sub"):
        profiles.save(_profile(ca_pem), blocker / "sub" / "profile.json")
