"""Server settings: defaults < TOML file < IMGSHARE_* environment < flags.

``load_settings(config_file, environ=..., overrides=...)`` never reads the real
environment here (``environ`` is always given), except in the one test that checks
that ``environ=None`` means ``os.environ``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imgshare.errors import ConfigError
from imgshare.server.config import DEFAULT_PORT, ENV_PREFIX, ServerSettings, load_settings


def _toml(tmp_path: Path, text: str, name: str = "imgshare.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(None, environ={}, overrides={})
    assert settings == ServerSettings()
    assert (settings.data, settings.host, settings.port) == (Path("data"), "127.0.0.1", 8443)
    assert settings.port == DEFAULT_PORT
    assert settings.inbox is True
    assert settings.tls_min == "1.3"
    assert settings.max_image_size == 256 * 1024 * 1024
    assert settings.log_format == "human"


def test_derived_paths_follow_the_data_folder() -> None:
    settings = ServerSettings(data=Path("/srv/img"))
    assert settings.cert_dir == Path("/srv/img/certs")
    assert settings.cert_path == Path("/srv/img/certs/server.pem")
    assert settings.key_path == Path("/srv/img/certs/server.key")
    assert settings.storage_key_path == Path("/srv/img/storage.key")
    explicit = ServerSettings(
        cert=Path("/etc/c.pem"), key=Path("/etc/c.key"), storage_key_file=Path("/k")
    )
    assert (explicit.cert_path, explicit.key_path) == (Path("/etc/c.pem"), Path("/etc/c.key"))
    assert explicit.storage_key_path == Path("/k")


# --- precedence ----------------------------------------------------------------------------


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        """
        [server]
        port = 1001
        host = "file.example"
        max_pixels = 1003
        idle_timeout = 4.5
        """,
    )
    environ = {"IMGSHARE_PORT": "2001", "IMGSHARE_HOST": "env.example"}
    settings = load_settings(config, environ=environ, overrides={"port": 3001})
    assert settings.port == 3001  # flag
    assert settings.host == "env.example"  # environment over file
    assert settings.max_pixels == 1003  # file over default
    assert settings.idle_timeout == 4.5
    assert settings.max_connections == ServerSettings().max_connections  # default


def test_unset_flags_do_not_override(tmp_path: Path) -> None:
    """Click passes None for every flag not given: those must not hide the others."""
    config = _toml(tmp_path, "port = 1001\ninbox = false\n")
    settings = load_settings(
        config,
        environ={"IMGSHARE_HOST": "env.example"},
        overrides={"port": None, "host": None, "inbox": None, "data": None},
    )
    assert (settings.port, settings.host, settings.inbox) == (1001, "env.example", False)
    assert settings.data == Path("data")


def test_environ_none_means_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSHARE_PORT", "9999")
    monkeypatch.setenv("IMGSHARE_INBOX", "no")
    settings = load_settings()
    assert (settings.port, settings.inbox) == (9999, False)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("data", "/srv/imgshare", Path("/srv/imgshare")),
        ("port", "0", 0),
        ("cert", "/etc/imgshare/server.pem", Path("/etc/imgshare/server.pem")),
        ("cert", "", None),
        ("client_ca", "ca.pem", Path("ca.pem")),
        ("inbox", "off", False),
        ("inbox", "TRUE", True),
        ("inbox", "1", True),
        ("max_image_size", "1048576", 1048576),
        ("quota_bytes", "0", 0),
        ("transfer_window", "2.5", 2.5),
        ("trusted_networks", "10.0.0.0/8, 192.168.0.0/16", ("10.0.0.0/8", "192.168.0.0/16")),
        ("extra_hosts", "imgs.example.org,192.0.2.10", ("imgs.example.org", "192.0.2.10")),
        ("log_format", "json", "json"),
        ("tls_min", "1.2", "1.2"),
    ],
)
def test_environment_values_are_converted(name: str, raw: str, expected: object) -> None:
    variable = ENV_PREFIX + name.upper()
    settings = load_settings(None, environ={variable: raw})
    assert getattr(settings, name) == expected


def test_every_setting_has_an_environment_variable() -> None:
    """The variables are derived from the field names, so none can be missing."""
    defaults = ServerSettings()
    for field in dataclasses.fields(ServerSettings):
        value = getattr(defaults, field.name)
        if field.name in ("port",):
            raw, expected = "1234", 1234
        elif isinstance(value, bool):
            raw, expected = str(not value).lower(), not value
        elif isinstance(value, int):
            raw, expected = str(value + 1), value + 1
        elif isinstance(value, float):
            raw, expected = str(value + 1.5), value + 1.5
        else:
            continue
        settings = load_settings(None, environ={f"IMGSHARE_{field.name.upper()}": raw})
        assert getattr(settings, field.name) == expected, field.name


# --- the file ------------------------------------------------------------------------------


def test_server_table_and_top_level_keys_mean_the_same(tmp_path: Path) -> None:
    body = 'data = "/srv/x"\nport = 1234\ninbox = false\ntrusted_networks = ["10.0.0.0/8"]\n'
    table = load_settings(_toml(tmp_path, "[server]\n" + body, "a.toml"), environ={})
    top = load_settings(_toml(tmp_path, body, "b.toml"), environ={})
    assert table == top
    assert (top.data, top.port, top.inbox) == (Path("/srv/x"), 1234, False)
    assert top.trusted_networks == ("10.0.0.0/8",)


def test_the_documented_example_file_loads(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        """
        [server]
        data = "/srv/imgshare"
        host = "0.0.0.0"
        port = 8443
        inbox = false
        quota_bytes = 53687091200
        log_format = "json"
        """,
    )
    settings = load_settings(config, environ={})
    assert settings.quota_bytes == 50 * 1024**3
    assert settings.host == "0.0.0.0"
    assert settings.log_format == "json"


@pytest.mark.parametrize("section", ["", "[server]\n"])
def test_unknown_key_in_the_file_is_an_error(tmp_path: Path, section: str) -> None:
    config = _toml(tmp_path, section + "port = 1\nmax_pixel = 5\nprot = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert "unknown setting(s) max_pixel, prot" in str(caught.value)
    assert str(config) in str(caught.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(_toml(tmp_path, "port = = 3\n"), environ={})


def test_server_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[server\] must be a table"):
        load_settings(_toml(tmp_path, "server = 5\n"), environ={})


def test_keys_outside_the_server_table_are_not_ignored(tmp_path: Path) -> None:
    config = _toml(tmp_path, 'port = 9000\n[server]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="port"):
        load_settings(config, environ={})


# --- bad values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "toml_value"),
    [
        ("port", '"eighty"'),
        ("port", "70000"),
        ("port", "-1"),
        ("port", "true"),
        ("port", "[1]"),
        ("inbox", '"maybe"'),
        ("tls_min", '"1.1"'),
        ("log_format", '"xml"'),
        ("log_level", '"verbose"'),
        ("max_connections", "0"),
        ("max_connections_per_address", "0"),
        ("max_image_size", "0"),
        ("max_pixels", "-5"),
        ("idle_timeout", "0"),
        ("tls_handshake_timeout", "-1.0"),
        ("transfer_window", '"soon"'),
        ("trusted_networks", '["10.0.0.0/8", "not a network"]'),
    ],
)
def test_bad_value_in_the_file_names_the_setting(
    tmp_path: Path, name: str, toml_value: str
) -> None:
    config = _toml(tmp_path, f"[server]\n{name} = {toml_value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("port", "8443x"),
        ("port", "12.5"),
        ("port", ""),
        ("inbox", "perhaps"),
        ("max_pixels", "lots"),
        ("idle_timeout", "-3"),
        ("log_level", "loud"),
        ("trusted_networks", "10.0.0.0/33"),
    ],
)
def test_bad_value_in_the_environment_names_the_setting(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={f"IMGSHARE_{name.upper()}": raw})
    assert name in str(caught.value)


def test_bad_flag_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, environ={}, overrides={"port": 65536})


def test_error_for_an_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="IMGSHARE_MAX_PIXELS"):
        load_settings(None, environ={"IMGSHARE_MAX_PIXELS": "many"})


_NOT_VALIDATED = "config.ServerSettings._check does not check this setting"


@pytest.mark.parametrize(
    ("source", "name", "value"),
    [
        pytest.param("toml", "port", "8443.9"),
        pytest.param("toml", "max_image_size", "1.5"),
        pytest.param("env", "data", ""),
        pytest.param("env", "idle_timeout", "nan"),
        pytest.param("env", "quota_bytes", "-1"),
        pytest.param("env", "max_login_failures", "0"),
        pytest.param("env", "shutdown_grace", "-1"),
    ],
)
def test_values_that_should_be_refused(tmp_path: Path, source: str, name: str, value: str) -> None:
    if source == "toml":
        kwargs = {"config_file": _toml(tmp_path, f"{name} = {value}\n"), "environ": {}}
    else:
        kwargs = {"environ": {f"IMGSHARE_{name.upper()}": value}}
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)  # type: ignore[arg-type]
    assert name in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = ServerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
