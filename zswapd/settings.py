"""The daemon's settings from defaults, a TOML file, the environment and flags.

Precedence, lowest first: built-in defaults (today's kernel's), the TOML file
given with ``--config``, ``ZSWAPD_*`` environment variables, command-line flags.
A later source overrides only the keys it sets.

The TOML file::

    [server]
    http = "127.0.0.1:7415"          # or "unix:/run/zswapd/http.sock"
    auth_token_file = "/etc/zswapd/token"
    max_pages_per_request = 1024

    [pools.default]                  # the pool every client gets by default
    compressor = "zstd"
    level = 3
    limit = "1G"                     # or limit_bytes = 1073741824

    [pools.fast]                     # more pools, created at start
    compressor = "lz4"
    backing_file = "/var/lib/zswapd/fast.swap"   # the second tier (any path: yours)
    backing_size = "1G"
    writeback = "lru"                # or "manual" (zram); writeback_limit = pages

Environment variables: ``ZSWAPD_KEY`` for every server setting of
:data:`SERVER_OPTIONS` (``ZSWAPD_HTTP``, ``ZSWAPD_MEMORY_LIMIT``, ...) and for
the default pool's (``ZSWAPD_COMPRESSOR``, ``ZSWAPD_POOL_LIMIT``, ...:
``_POOL_ENV``).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import compressors
from allocator import ALLOCATORS
from zswapd.config import PoolConfig, check_pool_name, unavailable_compressor
from zswapd.device import check_device_size
from zswapd.errors import ConfigError

__all__ = [
    "DEFAULT_HTTP",
    "POOL_OPTIONS",
    "SERVER_OPTIONS",
    "PoolOption",
    "ServerOption",
    "ServerSettings",
    "default_text",
    "load_settings",
    "parse_compressor",
    "parse_device",
    "parse_size",
]

DEFAULT_HTTP = "127.0.0.1:7415"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# (environment variable, pool setting, converter)


def _octal(text: str) -> int:
    return int(text, 8)


@dataclass(frozen=True)
class ServerOption:
    """One server setting, the one place it is described.

    From it come ``zswapd serve``'s flag (``--KEY-WITH-DASHES``), its
    environment variable (``ZSWAPD_KEY``), and the types a TOML file's
    ``[server]`` table may give it; its default is the ServerSettings field's.

    Attributes:
        key: the ServerSettings field and TOML key.
        kinds: the TOML value types accepted.
        parse: from a flag's or a variable's text.
        metavar, help: for ``--help`` (the default is added to the help).
        default: the default as said in ``--help`` where the field's value
            would not say it (None: the field's value).
    """

    key: str
    kinds: type | tuple[type, ...]
    parse: Callable[[str], Any]
    metavar: str | None
    help: str
    default: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "ZSWAPD_" + self.key.upper()


_OPT_STR = (str, type(None))
SERVER_OPTIONS: tuple[ServerOption, ...] = (
    ServerOption("http", str, str, "HOST:PORT|unix:PATH", "HTTP API"),
    ServerOption("unix_socket", _OPT_STR, str, "PATH", "wire protocol (docs/protocol.md)", "none"),
    ServerOption(
        "socket_mode", int, _octal, "MODE", "mode of Unix sockets, octal (0660 lets a group in)"
    ),
    ServerOption("auth_token_file", _OPT_STR, str, "FILE", "require this bearer token", "none"),
    ServerOption("metrics", _OPT_STR, str, "HOST:PORT", "also serve /metrics alone here", "none"),
    ServerOption("nbd", _OPT_STR, str, "HOST:PORT|unix:PATH", "export devices over NBD", "none"),
    ServerOption("max_pages_per_request", int, int, "N", "body cap in pages"),
    ServerOption(
        "max_connections",
        int,
        int,
        "N",
        "connections per frontend, NBD too; past it 503 (HTTP, wire: idle go first)",
    ),
    ServerOption(
        "state_dir",
        _OPT_STR,
        str,
        "DIR",
        "save pools here on SIGTERM, restore them on start",
        "none",
    ),
    ServerOption(
        "snapshot_interval",
        (int, float),
        float,
        "SECONDS",
        "also save every N seconds (0: at shutdown only)",
    ),
    ServerOption(
        "handshake_timeout",
        (int, float),
        float,
        "SECONDS",
        "close wire and NBD connections not through their handshake by then, and wire "
        "connections whose answers stay unread, or whose frame stays unfinished, that long",
    ),
    ServerOption(
        "header_timeout",
        (int, float),
        float,
        "SECONDS",
        "an HTTP request head must arrive within this; a body within a time for its size",
    ),
    ServerOption(
        "max_stale_handles",
        int,
        int,
        "N",
        "stale or forged handles one connection may send before it is closed",
    ),
    ServerOption(
        "memory_limit",
        (str, int),
        str,
        "SIZE|N%",
        "all pools and devices together: a size, a share of RAM, or 0 for none",
    ),
    ServerOption("max_pools", int, int, "N", "pools plus devices"),
    ServerOption(
        "backing_dir",
        _OPT_STR,
        str,
        "DIR",
        "where clients may create backing files; 0700, yours",
        "nowhere",
    ),
    ServerOption(
        "backing_quota",
        (str, int, type(None)),
        str,
        "SIZE|N%",
        "clients' backing files together: a size, a share of the backing dir's "
        "filesystem, or 0 for none",
        "25%",
    ),
)
_SERVER_KEYS = {o.key: o.kinds for o in SERVER_OPTIONS}


def default_text(option: ServerOption) -> str:
    """The default as ``--help`` says it: the option's own words, or the field's value."""
    if option.default is not None:
        return option.default
    value = ServerSettings.__dataclass_fields__[option.key].default
    return f"0{value:o}" if option.key == "socket_mode" else str(value)


def parse_size(text: str | int) -> int:
    """Bytes from ``4096``, ``512K``, ``1G``, ``1.5GiB`` ...

    Raises:
        ConfigError: not a size.
    """
    if isinstance(text, bool):  # TOML's true is not a size
        raise ConfigError(f"not a size: {text!r} (use e.g. 4096, 512M, 1G)")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"a size cannot be negative: {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 4096, 512M, 1G)")
    # Exact arithmetic: a float overflows (to inf, then OverflowError) on long digit strings.
    return int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_compressor(text: str) -> tuple[str, int | None]:
    """``NAME[:LEVEL]`` (as estimate names configurations): an installed algorithm
    and its level, if given.

    Raises:
        ValueError: not installed here, or a level that is not a whole number.
    """
    name, sep, level = text.partition(":")
    installed = compressors.available()
    if name not in installed:
        raise ValueError(unavailable_compressor(name))
    if not sep:
        return name, None
    try:
        return name, int(level)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r}: the level after ':' must be a whole number, e.g. {name}:3"
        ) from None


@dataclass(frozen=True)
class PoolOption:
    """One setting a pool is made with, the one place it is described.

    From it come the flag of ``zswapd serve`` (the default pool), of ``pools
    create`` and ``devices create``, and the default pool's ``ZSWAPD_*``
    variable (the flag's name: ``--pool-limit`` is ``ZSWAPD_POOL_LIMIT``).

    Attributes:
        key: the PoolConfig setting.
        flag: the command-line flag.
        parse: from a flag's or a variable's text.
        metavar, help, choices: for ``--help`` (``{whose}`` in help: whose pool).
        live: whether a pool takes it while it holds pages (as zram's sysfs
            files), so ``pools set`` has its flag too.
        installed: its choices are the compressors installed here (known
            only when a parser is built).
    """

    key: str
    flag: str
    parse: Callable[[str], Any]
    metavar: str | None
    help: str
    choices: tuple[str, ...] | None = None
    live: bool = False
    installed: bool = False

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return "ZSWAPD_" + self.dest.upper()


POOL_OPTIONS: tuple[PoolOption, ...] = (
    PoolOption(
        "compressor",
        "--compressor",
        parse_compressor,
        "NAME[:LEVEL]",
        "{whose} algorithm, with its level if wanted, as estimate names them: zstd:9, lz4 "
        "(zstd:3; lz4 and zstd:3 give Linux 6.12's sizes, lz4-lib is userspace liblz4; "
        "installed here: {installed})",
    ),
    PoolOption("level", "--level", int, "N", "compressor level (default: zstd 3, lz4hc 9)"),
    PoolOption(
        "allocator",
        "--allocator",
        str,
        None,
        "zsmalloc (default), zbud, z3fold",
        tuple(ALLOCATORS),
    ),
    PoolOption("chain_size", "--chain-size", int, "N", "zsmalloc's longest zspage, in pages (8)"),
    PoolOption(
        "limit_bytes",
        "--pool-limit",
        parse_size,
        "SIZE",
        "{whose} memory limit, e.g. 512M; 0: none (zram's mem_limit)",
        live=True,
    ),
    PoolOption(
        "huge_policy",
        "--huge-policy",
        str,
        None,
        "store (zram) or reject",
        ("store", "reject"),
        live=True,
    ),
    PoolOption(
        "backing_file",
        "--backing-file",
        str,
        "PATH",
        "the second tier (serve: any path; over HTTP: a new name in --backing-dir)",
    ),
    PoolOption(
        "backing_size",
        "--backing-size",
        parse_size,
        "SIZE",
        "its size, e.g. 1G (whole 4 KiB slots)",
    ),
    PoolOption(
        "writeback",
        "--writeback",
        str,
        None,
        "manual (zram, default) or lru (zswap: write back instead of refusing)",
        ("manual", "lru"),
    ),
    PoolOption(
        "writeback_limit",
        "--writeback-limit",
        int,
        "PAGES",
        "pages manual writeback may still write (zram's writeback_limit)",
        live=True,
    ),
    PoolOption(
        "accept_threshold_percent",
        "--accept-threshold-percent",
        int,
        "N",
        "zswap's hysteresis: once full, refuse (manual) or write back (lru) until below "
        "N percent of the limit (0-100)",
        live=True,
    ),
    PoolOption(
        "recompress_algo",
        "--recompress-algo",
        str,
        "NAME",
        "zram's recomp_algorithm, the secondary for recompress",
        installed=True,
    ),
    PoolOption("recompress_level", "--recompress-level", int, "N", "its level"),
)
_POOL_ENV = [(o.env, o.key, o.parse) for o in POOL_OPTIONS]


@dataclass
class ServerSettings:
    """Everything ``zswapd serve`` needs, merged from every source."""

    http: str = DEFAULT_HTTP
    unix_socket: str | None = None
    auth_token_file: str | None = None
    max_pages_per_request: int = 1024
    # Open connections per frontend (HTTP, wire, NBD).  Past it a newcomer is
    # refused (503; NBD just closes), except that HTTP first closes the connection
    # idle longest, or the slowest body, to make room.
    max_connections: int = 1024
    state_dir: str | None = None
    # Seconds between snapshots of every pool to state_dir (0: only at shutdown).
    snapshot_interval: float = 0
    # NBD listen address (HOST:PORT or unix:PATH) and devices (name -> settings).
    nbd: str | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Mode of Unix sockets (0600: the owner only; 0660 lets a group in).
    socket_mode: int = 0o600
    # A separate HOST:PORT serving /metrics alone (besides /metrics on the HTTP API).
    metrics: str | None = None
    pools: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    # Seconds a wire or NBD connection has to complete its handshake before it is closed.
    handshake_timeout: float = 10.0
    # Seconds an HTTP request head has to arrive (its body gets a time bounded by its size).
    header_timeout: float = 10.0
    # Requests naming a stale or forged handle that one connection may send; then it is closed.
    max_stale_handles: int = 64
    # All pools and devices together (zswap's max_pool_percent): bytes, a size such as
    # "4G", or a share of the machine's memory such as "20%"; 0 for none.
    memory_limit: str | int = "20%"
    # Pools plus devices, at most.
    max_pools: int = 64
    # Where clients (over HTTP) may create backing files; None: nowhere.
    backing_dir: str | None = None
    # Bytes all clients' backing files may total (a size, or "N%" of the backing
    # dir's filesystem); None: 25% of that filesystem's size at start.
    backing_quota: str | int | None = None

    def check(self) -> None:
        """Raise ConfigError for a server setting of the wrong type or range."""
        for key, kind in _SERVER_KEYS.items():
            value = getattr(self, key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"server setting {key} = {value!r} is not a {kind}")
        for key, least in (
            ("snapshot_interval", ">= 0"),
            ("handshake_timeout", "> 0"),
            ("header_timeout", "> 0"),
        ):
            value = getattr(self, key)
            # NaN compares false with everything: refuse it (and infinities) outright.
            bad = not math.isfinite(value) or value < 0 or (least == "> 0" and value == 0)
            if bad:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"{flag} must be a finite number of seconds {least}: {value!r}")
        if self.max_stale_handles < 1:
            raise ConfigError("max_stale_handles must be at least 1")
        if self.max_pools < 1:
            raise ConfigError("max_pools must be at least 1")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        if self.max_pages_per_request < 1:
            raise ConfigError("max_pages_per_request must be at least 1")
        if not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"socket_mode {self.socket_mode:o} is not a file mode")

    def device_configs(self) -> dict[str, tuple[int, PoolConfig]]:
        """Each device's size and pool settings.

        Raises:
            ConfigError: a bad name, size or setting.
        """
        out = {}
        for name, raw in self.devices.items():
            check_pool_name(name)
            values = dict(raw)
            if "size" not in values:
                raise ConfigError(f"device {name!r} needs a size")
            try:
                size = check_device_size(parse_size(values.pop("size")))
            except ConfigError as exc:
                raise ConfigError(f"device {name!r}: {exc}") from exc
            if "limit" in values:
                values["limit_bytes"] = parse_size(values.pop("limit"))
            if "backing_size" in values:  # a size, as the device's own (64M, 1G, ...)
                try:
                    values["backing_size"] = parse_size(values["backing_size"])
                except ConfigError as exc:
                    raise ConfigError(f"device {name!r}: backing_size: {exc}") from exc
            out[name] = (size, PoolConfig.from_dict(values))
        return out

    def pool_configs(self) -> dict[str, PoolConfig]:
        """Each pool's PoolConfig.

        Raises:
            ConfigError: a bad pool name or setting.
        """
        out = {}
        for name, raw in self.pools.items():
            check_pool_name(name)
            values = dict(raw)
            if "limit" in values:
                values["limit_bytes"] = parse_size(values.pop("limit"))
            if isinstance(values.get("backing_size"), str):  # "1G" as for limit
                values["backing_size"] = parse_size(values["backing_size"])
            if isinstance(values.get("backing_file"), str):
                # Absolute now: a state file names it, and the next start may
                # run in another working directory.
                values["backing_file"] = os.path.abspath(values["backing_file"])
            out[name] = PoolConfig.from_dict(values)
        return out

    def token(self) -> str | None:
        """The bearer token, read from ``auth_token_file`` (stripped).

        Raises:
            ConfigError: the file cannot be read or is empty.
        """
        if self.auth_token_file is None:
            return None
        try:
            token = Path(self.auth_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file: {exc}") from exc
        if not token:
            raise ConfigError(f"the token file {self.auth_token_file} is empty")
        return token


def _convert(name: str, value: str, conv: Any) -> Any:
    try:
        return conv(value)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{name}={value!r}: {exc}") from exc


def parse_device(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME=SIZE[,option=value...]`` (as ``--device``) -> (name, settings).

    Raises:
        ConfigError: not of that form.
    """
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--device {spec!r}: use NAME=SIZE[,option=value...]")
    size, *opts = rest.split(",")
    values: dict[str, Any] = {"size": size}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ConfigError(f"--device {spec!r}: {opt!r} is not option=value")
        values[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return name.strip(), values


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerSettings:
    """Merge defaults, file, environment and flags (flags win).

    ``flags`` holds server keys (http, unix_socket, auth_token_file,
    max_pages_per_request, state_dir) and default-pool keys (compressor, level,
    allocator, chain_size, limit_bytes, huge_policy, ...); None means unset.

    Raises:
        ConfigError: an unreadable file or a bad value.
    """
    settings = ServerSettings()
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
        server = data.pop("server", {})
        pools = data.pop("pools", {})
        devices = data.pop("devices", {})
        if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
            raise ConfigError(f"{config_file}: [devices.NAME] tables expected")
        settings.devices = {k: dict(v) for k, v in devices.items()}
        if data:
            raise ConfigError(f"{config_file}: unknown sections {', '.join(data)}")
        for key, value in server.items():
            if key not in _SERVER_KEYS:
                raise ConfigError(f"{config_file}: unknown server setting {key!r}")
            setattr(settings, key, value)
        if not isinstance(pools, dict) or not all(isinstance(v, dict) for v in pools.values()):
            raise ConfigError(f"{config_file}: [pools.NAME] tables expected")
        settings.pools = {"default": {}, **{k: dict(v) for k, v in pools.items()}}
    env = environ or {}
    default = settings.pools.setdefault("default", {})
    for option in SERVER_OPTIONS:
        if option.env in env:
            setattr(settings, option.key, _convert(option.env, env[option.env], option.parse))
    for var, key, conv in _POOL_ENV:
        if var in env:
            value = _convert(var, env[var], conv)
            if key == "compressor":  # NAME[:LEVEL]
                value, level = value
                if level is not None:
                    default["level"] = level
            default[key] = value
            if key == "limit_bytes":
                default.pop("limit", None)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key == "devices":
            for spec in value:
                name, values = parse_device(spec)
                settings.devices[name] = values
            continue
        if key in _SERVER_KEYS:
            setattr(settings, key, value)
        else:
            default[key] = value
            if key == "limit_bytes":
                default.pop("limit", None)
    settings.check()
    return settings
