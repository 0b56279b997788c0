"""Gateway settings: one frozen value, loaded once at start and validated there.

Sources, highest precedence first:

1. ``flags``: a mapping of setting name -> value from the command line. ``None`` values mean
   "not given" and are skipped; ``-`` in names is read as ``_``. Keys that are not settings
   raise ``ConfigError`` (a programming error in the caller, better loud than ignored).
2. Environment: ``CLASSGUARD_<NAME>`` (``CLASSGUARD_PORT=8443``), plus plain ``REDIS_URL`` as
   a fallback for ``redis_url`` (below ``CLASSGUARD_REDIS_URL``). Other ``CLASSGUARD_*``
   variables are ignored (tests and tools use that namespace too).
3. The TOML file: **flat top-level keys** named exactly like the settings
   (``port = 8443``, ``trusted_proxies = ["10.0.0.0/8"]``). Any other key, tables included,
   is an error naming the key. Relative paths in the file are relative to the file's folder.
4. The defaults of ``Settings``.

Strings are coerced to the setting's type wherever they come from: integers in base 10,
booleans from ``1/0/true/false/yes/no/on/off``, lists from comma-separated text. Every
problem raises ``ConfigError`` whose message starts with the setting's name, e.g.
``port: must be an integer 1-65535, got 'abc' (from CLASSGUARD_PORT)``.

``redis_url`` may be ``redis://``, ``rediss://`` (TLS) or ``unix://``; with no URL the
gateway starts the embedded Redis in ``data_dir``. ``redis_sentinels`` (``host:port``
entries), ``redis_sentinel_master`` and ``redis_password`` (the master's, masked like the
URL's) describe a Sentinel deployment; they are only validated here.

``Settings`` validates itself in ``__post_init__``, so values built directly in tests get
the same checks and derived defaults (``public_url``, ``audit_origin``, ``node_id``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_type_hints
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.model import DEFAULT_TIMEZONE

__all__ = ["DEFAULT_TIMEZONE", "ENV_PREFIX", "ConfigError", "Settings", "load_settings",
           "redact_url"]

ENV_PREFIX: Final = "CLASSGUARD_"

_MIB: Final = 1024 * 1024
_DAY: Final = 86400

_LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
_LANGS: Final = frozenset({"vi", "en"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_REDIS_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9:._-]{1,64}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9.:_\[\]-]{1,253}")
_METADATA: Final = ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
_ALLOW_HOST_RE: Final = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                                   r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range.

    ``setting`` names it (``"config"`` for the file itself); ``source`` says where the bad
    value came from (``"CLASSGUARD_PORT"``, ``"--port"``, ``"classguard.toml"``) when known.
    """

    code: Final = "invalid_config"

    def __init__(self, setting: str, message: str, source: str | None = None) -> None:
        self.setting = setting
        self.field = setting
        self.message = message
        self.source = source
        text = f"{setting}: {message}"
        if source:
            text += f" (from {source})"
        super().__init__(text)


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "node"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every gateway setting. Durations are whole seconds, sizes whole bytes."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("classguard-data")  # made absolute (relative to the cwd)

    # None -> embedded Redis in data_dir. redis://, rediss:// or unix://.
    redis_url: str | None = None
    redis_prefix: str = "cg:"
    redis_sentinels: tuple[str, ...] = ()  # "host:port" entries
    redis_sentinel_master: str | None = None
    # The password of the Redis master found through Sentinel (with a URL, the URL
    # carries it). Best given as CLASSGUARD_REDIS_PASSWORD from a secret.
    redis_password: str = ""
    # Connections per client pool. Under a burst a request waits for a free connection
    # (up to redis_pool_timeout_s) instead of failing at once; a Redis that is down still
    # fails at once, on connect.
    redis_max_connections: int = 256
    redis_pool_timeout_s: int = 10

    # Issuer (`iss`) of join tokens and base of every link we print. Empty -> derived from
    # host and port; set it whenever the gateway sits behind a proxy or TLS terminator.
    public_url: str = ""
    # Peers whose X-Forwarded-For we believe. Normalised CIDRs ("10.0.0.0/8").
    trusted_proxies: tuple[str, ...] = ()
    # Where platform calls (the adapters' ``egress_fields``) may go besides public
    # addresses: networks (CIDRs or addresses) and host names of platform servers in a
    # private network. Empty: loopback, private, link-local and metadata addresses are
    # refused, and so is plain http:// / ws://. See docs/adapters.md.
    platform_allow_networks: tuple[str, ...] = ()
    platform_allow_hosts: tuple[str, ...] = ()

    # Sign-in regulation (gateway/staff_regulation.py): failures per account and source,
    # per account from all sources before it is slowed, one attempt per
    # login_account_slow_s from new sources while it is.
    login_max_failures: int = 3
    login_account_max_failures: int = 10
    login_account_slow_s: int = 10
    login_window_s: int = 120
    login_ban_s: int = 300
    login_ban_max_s: int = _DAY

    max_body_bytes: int = 1 * _MIB
    roster_max_bytes: int = 5 * _MIB
    attachment_max_bytes: int = 50 * _MIB
    # Bytes of incident attachments each org (the incident's school) may store, on disk
    # under data_dir/attachments; an upload that would pass it is refused (413).
    attachment_org_quota_bytes: int = 2048 * _MIB

    # Lifetime of a join token when the class has no term end.
    join_token_default_lifetime_s: int = 180 * _DAY
    go_nonce_ttl_s: int = 30
    session_ttl_s: int = 12 * 3600

    default_lang: str = "vi"
    # The time zone of pages and evidence reports (an IANA name known to zoneinfo). A
    # class's own schedule zone wins wherever a class is shown.
    timezone: str = DEFAULT_TIMEZONE
    # NOTE: Secure cookies by default. Browsers accept them on http://localhost, but
    # non-browser clients over plain http need cookie_secure=false.
    cookie_secure: bool = True
    # Names this process in audit records and leases. Empty -> "<hostname>-<pid>".
    node_id: str = ""
    # C2SP checkpoint origin / note key name. Empty -> "<public_url host>/classguard".
    audit_origin: str = ""
    # 0: an audit append is durable once the local AOF is fsynced; N: also WAIT for N replicas.
    audit_durability_replicas: int = 0
    log_level: str = "info"

    # Memory cap of the embedded Redis (maxmemory, policy noeviction: a full Redis
    # refuses writes and the gateway answers 503, it never evicts state or audit
    # records); an alert is raised at redis_memory_alert_percent of it. See
    # docs/operations.md for sizing.
    embedded_redis_maxmemory_bytes: int = 1024 * _MIB
    redis_memory_alert_percent: int = 80
    # Without a proxy in front (`classguard serve` on a LAN): a request head must arrive
    # whole within header_read_timeout_s of its first byte (or of the connection
    # opening); a request body may pause at most body_read_timeout_s between reads; one
    # address holds at most max_connections_per_address connections (a school behind
    # NAT is one address: the default fits 1,000+ students).
    header_read_timeout_s: int = 15
    body_read_timeout_s: int = 60
    max_connections_per_address: int = 4000
    # Who may read /metrics: clients in these networks, or any client presenting
    # "Authorization: Bearer <metrics_token>" (empty: no token accepted).
    metrics_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    metrics_token: str = ""

    # Incident notifications by email (gateway/notify.py). Empty smtp_host: no email is
    # sent and every notification is recorded as not sent. smtp_security: "starttls"
    # (upgrade on smtp_port, usually 587), "tls" (implicit TLS, usually 465) or "none"
    # (plain, only for a relay on loopback; never with credentials). The password comes
    # from smtp_password or, sealed with the gateway's secret box, smtp_password_sealed
    # (`python -m gateway.notify seal-password`).
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_password_sealed: str = ""
    # PEM file of the certificate authorities a private mail server's certificate is
    # checked against (empty: the system's). Certificates are always checked.
    smtp_ca_file: str = ""
    smtp_from: str = ""
    smtp_timeout_s: int = 20
    smtp_max_attempts: int = 5
    smtp_retry_base_s: int = 30
    # An incident no administrator acknowledged within this many seconds is escalated to
    # the parent org's administrators, then after as long again to the next parent.
    incident_ack_timeout_s: int = 900

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        # NOTE: never print the Redis password, even in a debug repr.
        inner = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({inner})"

    # --- derived views -------------------------------------------------------------

    @property
    def embedded_redis(self) -> bool:
        """True when the gateway must start its own Redis (no URL, no Sentinel)."""
        return self.redis_url is None and not self.redis_sentinels

    def trusted_proxy_networks(
        self,
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` as network objects (compute once, at app start)."""
        return tuple(ipaddress.ip_network(n) for n in self.trusted_proxies)

    def egress_policy(self) -> Any:
        """The ``meeting_adapters.egress.EgressPolicy`` of the platform allow settings."""
        from meeting_adapters.egress import EgressPolicy

        return EgressPolicy.from_settings(self.platform_allow_networks,
                                          self.platform_allow_hosts)

    def redacted(self) -> dict[str, Any]:
        """All settings as JSON-friendly values, with the Redis password masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        if self.redis_url is not None:
            out["redis_url"] = redact_url(self.redis_url)
        if self.redis_password:
            out["redis_password"] = "***"  # noqa: S105 - the mask, not a password
        if self.metrics_token:
            out["metrics_token"] = "***"  # noqa: S105 - the mask, not a token
        for secret in ("smtp_password", "smtp_password_sealed"):
            if getattr(self, secret):
                out[secret] = "***"
        return out


# --- validation -------------------------------------------------------------------------


def _set(obj: Settings, name: str, value: object) -> None:
    # Frozen dataclass: normalisation in __post_init__ has to bypass __setattr__.
    object.__setattr__(obj, name, value)


def _check_type(name: str, value: object, kind: type) -> None:
    # bool is an int subclass; never accept it where a number is meant (or vice versa).
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(name, f"must be {_TYPE_WORD[kind]}, got {value!r}")


_TYPE_WORD: Final[dict[type, str]] = {
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    Path: "a path",
    tuple: "a list",
}


# Allowed range of every integer setting (None: no upper bound).
_INT_RANGES: Final[Mapping[str, tuple[int, int | None]]] = {
    "port": (1, 65535),
    "login_max_failures": (1, 1000),
    "login_account_max_failures": (1, 100000),
    "login_account_slow_s": (1, 3600),
    "login_window_s": (1, 7 * _DAY),
    "login_ban_s": (1, 365 * _DAY),
    "login_ban_max_s": (1, 365 * _DAY),
    "max_body_bytes": (1024, None),
    "roster_max_bytes": (1024, None),
    "attachment_max_bytes": (1024, None),
    "attachment_org_quota_bytes": (0, None),
    "join_token_default_lifetime_s": (60, 10 * 365 * _DAY),
    "go_nonce_ttl_s": (1, 300),
    "session_ttl_s": (60, 30 * _DAY),
    "audit_durability_replicas": (0, 16),
    "redis_max_connections": (4, 10000),
    "redis_pool_timeout_s": (1, 120),
    "embedded_redis_maxmemory_bytes": (64 * _MIB, None),
    "redis_memory_alert_percent": (50, 95),
    "header_read_timeout_s": (1, 300),
    "body_read_timeout_s": (1, 3600),
    "max_connections_per_address": (16, 1_000_000),
}


def _int_words(name: str) -> str:
    low, high = _INT_RANGES[name]
    return f"an integer {low}-{high}" if high is not None else f"an integer >= {low}"


def _int_range(obj: Settings, name: str) -> None:
    value = getattr(obj, name)
    low, high = _INT_RANGES[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        raise ConfigError(name, f"must be {_int_words(name)}, got {value!r}")


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or ``password=`` query item) replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
        query = parts.query
        if query:
            items = [
                (k, "***" if k.lower() == "password" else v)
                for k, v in parse_qsl(query, keep_blank_values=True)
            ]
            query = urlencode(items, safe="*")
        if netloc == parts.netloc and query == parts.query:
            return url
        # Built by hand: urlunsplit drops the "//" of unix:///path (empty netloc).
        out = f"{parts.scheme}://{netloc}{parts.path}"
        out += f"?{query}" if query else ""
        return out + (f"#{parts.fragment}" if parts.fragment else "")
    except ValueError:
        return "<unparseable url>"


def _validate_redis_url(url: str) -> None:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("redis_url", f"is not a valid URL: {shown!r}") from None
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ConfigError("redis_url", f"needs a host, got {shown!r}")
        if port == 0:
            raise ConfigError("redis_url", f"port must be 1-65535, got {shown!r}")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError("redis_url", f"database must be a number, got {shown!r}")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("redis_url", f"needs a socket path, got {shown!r}")
    else:
        raise ConfigError(
            "redis_url", f"scheme must be redis://, rediss:// or unix://, got {shown!r}"
        )


def _split_host_port(name: str, entry: str) -> tuple[str, int]:
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        ok = bool(sep) and rest.startswith(":")
        port_text = rest[1:]
    else:
        host, sep, port_text = entry.rpartition(":")
        ok = bool(sep) and ":" not in host
    if not ok or not host or not _HOST_RE.fullmatch(host) or not port_text.isdigit():
        raise ConfigError(name, f"entries must be host:port, got {entry!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(name, f"port must be 1-65535, got {entry!r}")
    return host, port


def _normalise_public_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("public_url", f"is not a valid URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("public_url", f"must be an http(s) URL with a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("public_url", "must not contain credentials")
    if parts.query or parts.fragment:
        raise ConfigError("public_url", f"must not have a query or fragment, got {url!r}")
    if any(c.isspace() for c in url):
        raise ConfigError("public_url", f"must not contain whitespace, got {url!r}")
    # Canonical form: lower-case scheme and host, no trailing slash; tokens compare `iss`
    # byte for byte, so one spelling only.
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def _derived_public_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a bind-all address is no link target
        host = "localhost"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _networks_setting(name: str, value: object) -> tuple[str, ...]:
    """Normalised CIDRs of a list-of-networks setting, the bad entry named."""
    _check_type(name, value, tuple)
    networks: list[str] = []
    for entry in value:  # type: ignore[attr-defined]
        _check_type(name, entry, str)
        try:
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(
                name, f"{entry!r} is not an IP address or CIDR network: {exc}") from None
    return tuple(networks)


def _validate(s: Settings) -> None:
    _check_type("host", s.host, str)
    if not _HOST_RE.fullmatch(s.host):
        raise ConfigError("host", f"must be a host name or IP address, got {s.host!r}")
    _int_range(s, "port")

    data_dir = s.data_dir
    if isinstance(data_dir, str):
        data_dir = Path(data_dir)
    _check_type("data_dir", data_dir, Path)
    if str(data_dir) in ("", "."):
        raise ConfigError("data_dir", "must not be empty")
    _set(s, "data_dir", data_dir.expanduser().absolute())

    if s.redis_url is not None:
        _check_type("redis_url", s.redis_url, str)
        _validate_redis_url(s.redis_url)
    _check_type("redis_prefix", s.redis_prefix, str)
    if not _REDIS_PREFIX_RE.fullmatch(s.redis_prefix):
        raise ConfigError(
            "redis_prefix",
            f"must be 1-64 characters of A-Z a-z 0-9 : . _ -, got {s.redis_prefix!r}",
        )
    _check_type("redis_sentinels", s.redis_sentinels, tuple)
    for entry in s.redis_sentinels:
        _check_type("redis_sentinels", entry, str)
        _split_host_port("redis_sentinels", entry)
    if s.redis_sentinel_master is not None:
        _check_type("redis_sentinel_master", s.redis_sentinel_master, str)
        if not s.redis_sentinel_master.strip():
            raise ConfigError("redis_sentinel_master", "must not be empty")
    if s.redis_sentinels and s.redis_sentinel_master is None:
        raise ConfigError("redis_sentinel_master", "is required when redis_sentinels is set")
    if s.redis_sentinel_master is not None and not s.redis_sentinels:
        raise ConfigError("redis_sentinels", "is required when redis_sentinel_master is set")
    _check_type("redis_password", s.redis_password, str)
    if s.redis_password and not s.redis_sentinels:
        raise ConfigError("redis_password", "is for Sentinel deployments; with redis_url, "
                          "put the password in the URL")

    _check_type("public_url", s.public_url, str)
    public_url = s.public_url or _derived_public_url(s.host, s.port)
    _set(s, "public_url", _normalise_public_url(public_url))

    _check_type("trusted_proxies", s.trusted_proxies, tuple)
    networks: list[str] = []
    for entry in s.trusted_proxies:
        _check_type("trusted_proxies", entry, str)
        try:
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(
                "trusted_proxies", f"{entry!r} is not an IP address or CIDR network: {exc}"
            ) from None
    _set(s, "trusted_proxies", tuple(networks))
    _set(s, "metrics_networks", _networks_setting("metrics_networks", s.metrics_networks))
    _check_type("metrics_token", s.metrics_token, str)
    if s.metrics_token and (len(s.metrics_token) < 32 or not s.metrics_token.isascii()
                            or any(c.isspace() for c in s.metrics_token)):
        raise ConfigError("metrics_token",
                          "must be empty or at least 32 printable ASCII characters")

    _check_type("platform_allow_networks", s.platform_allow_networks, tuple)
    allowed: list[str] = []
    for entry in s.platform_allow_networks:
        _check_type("platform_allow_networks", entry, str)
        try:
            net = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError as exc:
            raise ConfigError(
                "platform_allow_networks",
                f"{entry!r} is not an IP address or CIDR network: {exc}") from None
        # NOTE: allowing everything, or the cloud metadata service, is never a platform
        # deployment; refuse it rather than open the gateway up to its own network.
        if net.prefixlen == 0 or any(ipaddress.ip_address(m) in net for m in _METADATA
                                     if ipaddress.ip_address(m).version == net.version):
            raise ConfigError("platform_allow_networks", f"{entry!r} would allow every "
                              "address or a cloud metadata address; name the platform's "
                              "own network")
        allowed.append(str(net))
    _set(s, "platform_allow_networks", tuple(allowed))
    _check_type("platform_allow_hosts", s.platform_allow_hosts, tuple)
    hosts: list[str] = []
    for entry in s.platform_allow_hosts:
        _check_type("platform_allow_hosts", entry, str)
        name = entry.strip().lower().rstrip(".")
        if not _ALLOW_HOST_RE.fullmatch(name) or _is_ip(name):
            raise ConfigError("platform_allow_hosts", f"{entry!r} is not a host name (give "
                              "addresses in platform_allow_networks)")
        hosts.append(name)
    _set(s, "platform_allow_hosts", tuple(hosts))

    for name in _INT_RANGES:
        if name != "port":
            _int_range(s, name)
    if s.login_ban_max_s < s.login_ban_s:
        raise ConfigError(
            "login_ban_max_s",
            f"must be >= login_ban_s ({s.login_ban_s}), got {s.login_ban_max_s}",
        )

    _check_type("default_lang", s.default_lang, str)
    if s.default_lang not in _LANGS:
        raise ConfigError(
            "default_lang", f"must be one of {sorted(_LANGS)}, got {s.default_lang!r}"
        )
    _check_type("timezone", s.timezone, str)
    try:
        ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "timezone", f"must be an IANA time zone such as {DEFAULT_TIMEZONE}, "
            f"got {s.timezone!r}") from None
    _check_type("cookie_secure", s.cookie_secure, bool)

    _check_type("node_id", s.node_id, str)
    node_id = s.node_id or _default_node_id()
    if not _NODE_ID_RE.fullmatch(node_id):
        raise ConfigError(
            "node_id", f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {node_id!r}"
        )
    _set(s, "node_id", node_id)

    _check_type("audit_origin", s.audit_origin, str)
    origin = s.audit_origin or f"{urlsplit(s.public_url).hostname}/classguard"
    # C2SP signed-note key names: non-empty, no whitespace, no '+'.
    if not origin.isprintable() or any(c.isspace() or c == "+" for c in origin):
        raise ConfigError(
            "audit_origin", f"must be non-empty without whitespace or '+', got {origin!r}"
        )
    _set(s, "audit_origin", origin)

    _check_type("log_level", s.log_level, str)
    level = s.log_level.lower()
    if level not in _LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {sorted(_LOG_LEVELS)}, got {s.log_level!r}")
    _set(s, "log_level", level)
    _validate_smtp(s)


_SMTP_SECURITY: Final = frozenset({"starttls", "tls", "none"})
_SMTP_INT_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "smtp_port": (1, 65535),
    "smtp_timeout_s": (1, 300),
    "smtp_max_attempts": (1, 20),
    "smtp_retry_base_s": (1, 3600),
    "incident_ack_timeout_s": (1, 7 * _DAY),
}
_EMAIL_RE: Final = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
                              r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                              r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


def valid_email(value: str) -> bool:
    """A plain ``local@domain.tld`` address (no display name, no quoting), <= 254 chars."""
    return len(value) <= 254 and bool(_EMAIL_RE.fullmatch(value))


def _validate_smtp(s: Settings) -> None:
    for name in ("smtp_host", "smtp_security", "smtp_username", "smtp_password",
                 "smtp_password_sealed", "smtp_from", "smtp_ca_file"):
        _check_type(name, getattr(s, name), str)
    for name, (low, high) in _SMTP_INT_RANGES.items():
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(name, f"must be an integer {low}-{high}, got {value!r}")
    host = s.smtp_host.strip()
    _set(s, "smtp_host", host)
    if host and not _HOST_RE.fullmatch(host):
        raise ConfigError("smtp_host", f"must be a host name or IP address, got {host!r}")
    security = s.smtp_security.strip().lower()
    if security not in _SMTP_SECURITY:
        raise ConfigError("smtp_security",
                          f"must be one of {sorted(_SMTP_SECURITY)}, got {s.smtp_security!r}")
    _set(s, "smtp_security", security)
    if s.smtp_password and s.smtp_password_sealed:
        raise ConfigError("smtp_password", "give smtp_password or smtp_password_sealed, "
                          "not both")
    if (s.smtp_password or s.smtp_password_sealed) and not s.smtp_username:
        raise ConfigError("smtp_username", "is required when an SMTP password is set")
    if s.smtp_username and security == "none":
        raise ConfigError("smtp_security", "must be starttls or tls when smtp_username is "
                          "set: credentials never cross the network in clear")
    if s.smtp_ca_file and not os.path.isfile(s.smtp_ca_file):
        raise ConfigError("smtp_ca_file", f"no such file: {s.smtp_ca_file!r}")
    if host and not valid_email(s.smtp_from):
        raise ConfigError("smtp_from", "must be an email address (local@domain) when "
                          f"smtp_host is set, got {s.smtp_from!r}")


# --- loading ----------------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _coerce_int(name: str, value: object, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    raise ConfigError(name, f"must be {_int_words(name)}, got {value!r}", source)


def _coerce_bool(name: str, value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(name, f"must be true or false (1/0, yes/no), got {value!r}", source)


def _coerce_str(name: str, value: object, source: str) -> str:
    if isinstance(value, str):
        return value.strip()
    raise ConfigError(name, f"must be a string, got {value!r}", source)


def _coerce_list(name: str, value: object, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(name, f"entries must be strings, got {item!r}", source)
            items.append(item)
    else:
        raise ConfigError(name, f"must be a list or comma-separated text, got {value!r}", source)
    return tuple(i.strip() for i in items if i.strip())


def _coerce(name: str, kind: Any, value: object, source: str, base_dir: Path | None) -> object:
    if kind is int:
        return _coerce_int(name, value, source)
    if kind is bool:
        return _coerce_bool(name, value, source)
    if kind is str:
        return _coerce_str(name, value, source)
    if kind == str | None:
        text = _coerce_str(name, value, source)
        return text or None
    if kind == tuple[str, ...]:
        return _coerce_list(name, value, source)
    if kind is Path:
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(name, f"must be a path, got {value!r}", source)
        if not os.fspath(value).strip():
            raise ConfigError(name, "must not be empty", source)
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path
    raise TypeError(f"no coercion for setting {name} of type {kind!r}")  # pragma: no cover


def _read_toml(config_file: Path) -> dict[str, Any]:
    try:
        with config_file.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {config_file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{config_file} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError("config", f"cannot read {config_file}: {exc.strerror}") from None


def load_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config_file: Path | None,
) -> Settings:
    """Merge flags > environment > TOML file > defaults into validated ``Settings``.

    Raises ``ConfigError`` naming the first bad setting. Pure apart from reading
    ``config_file``; pass ``os.environ`` (or a dict in tests) as ``env``.
    """
    types = _field_types()
    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    def put(name: str, raw: object, source: str, base_dir: Path | None = None) -> None:
        values[name] = _coerce(name, types[name], raw, source, base_dir)
        sources[name] = source

    if config_file is not None:
        data = _read_toml(config_file)
        base_dir = config_file.expanduser().absolute().parent
        for key, raw in data.items():
            if key not in types:
                hint = " (settings are flat top-level keys)" if isinstance(raw, dict) else ""
                raise ConfigError(key, f"unknown setting{hint}", str(config_file))
            put(key, raw, str(config_file), base_dir)

    fallback = env.get("REDIS_URL")
    if fallback is not None and f"{ENV_PREFIX}REDIS_URL" not in env:
        put("redis_url", fallback, "REDIS_URL")
    for name in types:
        var = f"{ENV_PREFIX}{name.upper()}"
        if var in env:
            put(name, env[var], var)

    for key, raw in flags.items():
        if raw is None:
            continue
        name = key.replace("-", "_")
        if name not in types:
            raise ConfigError(name, "unknown setting", "flags")
        put(name, raw, f"--{name.replace('_', '-')}")

    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ConfigError as exc:
        if exc.source is None and exc.setting in sources:
            raise ConfigError(exc.setting, exc.message, sources[exc.setting]) from None
        raise
