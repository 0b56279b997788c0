"""Settings: precedence, coercion, validation messages that name the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, load_settings, redact_url


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- precedence ------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings({}, {}, None)
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.data_dir.is_absolute() and s.data_dir.name == "classguard-data"
    assert s.redis_url is None and s.embedded_redis
    assert s.public_url == "http://127.0.0.1:8080"
    assert s.audit_origin == "127.0.0.1/classguard"
    assert s.max_body_bytes == 1024 * 1024
    assert s.cookie_secure is True
    assert s.default_lang == "vi"
    assert s.node_id  # "<hostname>-<pid>"


def test_flags_beat_env_beat_toml_beat_defaults(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path,
        'port = 7000\nhost = "10.1.2.3"\nlog_level = "debug"\nlogin_ban_s = 600\n',
    )
    env = {"CLASSGUARD_PORT": "7100", "CLASSGUARD_HOST": "10.9.9.9"}
    flags = {"port": 7200, "host": None, "data_dir": None}
    s = load_settings(flags, env, toml)
    assert s.port == 7200  # flag
    assert s.host == "10.9.9.9"  # env (the flag was None: not given)
    assert s.log_level == "debug"  # TOML
    assert s.login_ban_s == 600  # TOML
    assert s.login_window_s == 120  # default
    assert s.public_url == "http://10.9.9.9:7200"  # derived from the merged values


def test_redis_url_env_fallback_order(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'redis_url = "redis://file:6379/0"\n')
    assert load_settings({}, {}, toml).redis_url == "redis://file:6379/0"
    env = {"REDIS_URL": "redis://plain:6379/0"}
    assert load_settings({}, env, toml).redis_url == "redis://plain:6379/0"
    env["CLASSGUARD_REDIS_URL"] = "redis://ours:6379/0"
    assert load_settings({}, env, toml).redis_url == "redis://ours:6379/0"
    flags = {"redis-url": "unix:///run/redis.sock"}
    assert load_settings(flags, env, toml).redis_url == "unix:///run/redis.sock"


def test_unrelated_classguard_env_vars_are_ignored() -> None:
    s = load_settings({}, {"CLASSGUARD_TEST_REDIS_URL": "x", "PORT": "1"}, None)
    assert s.port == 8080


def test_toml_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'data_dir = "state"\n')
    assert load_settings({}, {}, toml).data_dir == tmp_path / "state"


def test_empty_optional_env_means_unset() -> None:
    s = load_settings({}, {"CLASSGUARD_REDIS_URL": "", "CLASSGUARD_PUBLIC_URL": ""}, None)
    assert s.redis_url is None
    assert s.public_url == "http://127.0.0.1:8080"


# --- coercion ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True)]
    + [("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_bool_from_env(text: str, expected: bool) -> None:
    assert load_settings({}, {"CLASSGUARD_COOKIE_SECURE": text}, None).cookie_secure is expected


def test_int_and_list_coercion(tmp_path: Path) -> None:
    env = {
        "CLASSGUARD_PORT": " 8443 ",
        "CLASSGUARD_MAX_BODY_BYTES": "2_097_152",
        "CLASSGUARD_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1 ,,2001:db8::/32",
    }
    s = load_settings({}, env, None)
    assert s.port == 8443
    assert s.max_body_bytes == 2 * 1024 * 1024
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32")
    assert [str(n) for n in s.trusted_proxy_networks()] == list(s.trusted_proxies)
    toml = write_toml(tmp_path, 'trusted_proxies = ["127.0.0.1"]\ncookie_secure = false\n')
    s = load_settings({}, {}, toml)
    assert s.trusted_proxies == ("127.0.0.1/32",)
    assert s.cookie_secure is False


def test_public_url_is_canonical_and_feeds_audit_origin() -> None:
    s = load_settings({"public_url": "HTTPS://Class.Example.EDU.vn/guard/"}, {}, None)
    assert s.public_url == "https://class.example.edu.vn/guard"
    assert s.audit_origin == "class.example.edu.vn/classguard"


def test_bind_all_host_gives_a_usable_public_url() -> None:
    assert load_settings({"host": "0.0.0.0"}, {}, None).public_url == "http://localhost:8080"
    assert load_settings({"host": "::1"}, {}, None).public_url == "http://[::1]:8080"


# --- validation errors name the setting ------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "setting", "fragment"),
    [
        ({"port": "abc"}, {}, "port", "must be an integer 1-65535, got 'abc'"),
        ({}, {"CLASSGUARD_PORT": "70000"}, "port", "CLASSGUARD_PORT"),
        ({"port": True}, {}, "port", "integer"),
        ({}, {"CLASSGUARD_COOKIE_SECURE": "maybe"}, "cookie_secure", "true or false"),
        ({"host": "bad host"}, {}, "host", "host name"),
        ({}, {"CLASSGUARD_LOGIN_MAX_FAILURES": "0"}, "login_max_failures", "1-1000"),
        ({"go_nonce_ttl_s": 3600}, {}, "go_nonce_ttl_s", "1-300"),
        ({"max_body_bytes": "-1"}, {}, "max_body_bytes", ">= 1024"),
        ({"login_ban_s": 600, "login_ban_max_s": 60}, {}, "login_ban_max_s", "login_ban_s"),
        ({"default_lang": "fr"}, {}, "default_lang", "'fr'"),
        ({"log_level": "loud"}, {}, "log_level", "'loud'"),
        ({"redis_url": "http://x"}, {}, "redis_url", "scheme"),
        ({"redis_url": "redis://"}, {}, "redis_url", "host"),
        ({"redis_url": "redis://h:99999"}, {}, "redis_url", "not a valid URL"),
        ({"redis_prefix": "has space"}, {}, "redis_prefix", "1-64"),
        ({"public_url": "ftp://x"}, {}, "public_url", "http(s)"),
        ({"public_url": "https://u:p@x"}, {}, "public_url", "credentials"),
        ({"public_url": "https://x/?a=1"}, {}, "public_url", "query"),
        ({"node_id": "a b"}, {}, "node_id", "characters"),
        ({"audit_origin": "a+b"}, {}, "audit_origin", "'+'"),
        ({"audit_durability_replicas": 99}, {}, "audit_durability_replicas", "0-16"),
        ({"redis_sentinels": "h:1"}, {}, "redis_sentinel_master", "required"),
        ({"redis_sentinel_master": "m"}, {}, "redis_sentinels", "required"),
        ({"redis_password": "s3cret"}, {}, "redis_password", "in the URL"),
        (
            {"redis_sentinels": "h", "redis_sentinel_master": "m"},
            {},
            "redis_sentinels",
            "host:port",
        ),
        (
            {"redis_sentinels": "h:0", "redis_sentinel_master": "m"},
            {},
            "redis_sentinels",
            "1-65535",
        ),
        ({"data_dir": ""}, {}, "data_dir", "empty"),
        ({"trusted_proxies": 5}, {}, "trusted_proxies", "list"),
        ({"no_such_setting": 1}, {}, "no_such_setting", "unknown setting"),
    ],
)
def test_errors_name_the_setting(
    flags: dict[str, object], env: dict[str, str], setting: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env, None)
    assert info.value.setting == setting
    assert str(info.value).startswith(f"{setting}: ")
    assert fragment in str(info.value)


def test_error_says_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^port: .* \(from CLASSGUARD_PORT\)$"):
        load_settings({}, {"CLASSGUARD_PORT": "x"}, None)
    with pytest.raises(ConfigError, match=r"\(from --port\)$"):
        load_settings({"port": "x"}, {}, None)
    toml = write_toml(tmp_path, 'port = "x"\n')
    with pytest.raises(ConfigError, match=r"classguard\.toml\)$"):
        load_settings({}, {}, toml)


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.1/8", "300.1.1.1", "10.0.0.0/33", "not-an-ip", "2001:db8::1/32"],
)
def test_trusted_proxies_must_be_cidrs(entry: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, {"CLASSGUARD_TRUSTED_PROXIES": f"10.0.0.0/8,{entry}"}, None)
    assert info.value.setting == "trusted_proxies"
    assert repr(entry) in str(info.value)


def test_redis_url_password_never_in_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"redis_url": "redis://user:hunter2@:0"}, {}, None)
    assert "hunter2" not in str(info.value)


# --- the TOML file ---------------------------------------------------------------------


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "port = 8080\nprot = 9\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, {}, toml)
    assert info.value.setting == "prot"
    assert "unknown setting" in str(info.value)


def test_toml_tables_are_rejected_with_a_hint(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "[gateway]\nport = 8080\n")
    with pytest.raises(ConfigError, match=r"^gateway: unknown setting \(settings are flat"):
        load_settings({}, {}, toml)


def test_toml_type_is_checked(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "cookie_secure = 3\n")
    with pytest.raises(ConfigError, match="^cookie_secure: "):
        load_settings({}, {}, toml)


def test_cross_setting_checks_see_the_merged_values(tmp_path: Path) -> None:
    # login_ban_max_s comes first in the file and is below the default login_ban_s.
    toml = write_toml(tmp_path, "login_ban_max_s = 60\nlogin_ban_s = 30\n")
    s = load_settings({}, {}, toml)
    assert (s.login_ban_s, s.login_ban_max_s) == (30, 60)
    with pytest.raises(ConfigError, match=r"^login_ban_max_s: .*\(from --login-ban-max-s\)$"):
        load_settings({"login_ban_max_s": 10}, {}, toml)


def test_missing_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^config: file not found"):
        load_settings({}, {}, tmp_path / "absent.toml")
    broken = write_toml(tmp_path, "port = = 1\n")
    with pytest.raises(ConfigError, match="^config: .* is not valid TOML"):
        load_settings({}, {}, broken)


# --- the value itself ------------------------------------------------------------------


def test_settings_are_frozen_and_validated_when_built_directly() -> None:
    s = Settings(port=9000)
    assert s.public_url == "http://127.0.0.1:9000"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="^port: "):
        Settings(port=0)


def test_redacted_hides_redis_password() -> None:
    s = Settings(redis_url="redis://app:s3cret@redis.internal:6379/2?password=s3cret")
    red = s.redacted()
    assert "s3cret" not in str(red)
    assert "s3cret" not in repr(s)
    assert red["redis_url"].startswith("redis://app:***@redis.internal:6379/2")
    assert red["port"] == 8080
    assert isinstance(red["data_dir"], str)
    assert red["trusted_proxies"] == []
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert (
        redact_url("unix:///run/r.sock?db=1&password=pw") == "unix:///run/r.sock?db=1&password=***"
    )


def test_timezone_is_a_known_zone() -> None:
    assert Settings().timezone == "Asia/Ho_Chi_Minh"
    assert load_settings({}, {"CLASSGUARD_TIMEZONE": "Asia/Bangkok"}, None).timezone \
        == "Asia/Bangkok"
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", ""):
        with pytest.raises(ConfigError, match="^timezone: must be an IANA time zone"):
            Settings(timezone=bad)
