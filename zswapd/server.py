"""``zswapd serve``: the daemon process (uvicorn serving the HTTP API).

Sockets are made here, not by uvicorn: a Unix socket is created with mode 0600
(uvicorn would make it 0666), a stale socket file left by a crash is replaced,
and a live one (another daemon answering on it) is refused with a clear message.
SIGTERM and SIGINT stop accepting and let in-flight requests finish (uvicorn's
graceful shutdown); the socket file is removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import uvicorn

import allocator
from compressors import backend_lz4
from zswapd import __version__, fastpath
from zswapd.cli_format import algorithm, count, human, limit
from zswapd.config import PoolConfig
from zswapd.device import DeviceRegistry
from zswapd.errors import ConfigError
from zswapd.http_api import ApiSettings, create_app
from zswapd.http_protocol import HttpLimits, linger_cap, protocol_class
from zswapd.limits import registry_for
from zswapd.malloc import trim_when_idle
from zswapd.nbd_server import NbdSettings, start_nbd_server
from zswapd.offload import run_in_thread, thread_jobs
from zswapd.pool import LIVE_SETTINGS, PAGE_SIZE, PagePool
from zswapd.pools import PoolRegistry
from zswapd.settings import ServerSettings
from zswapd.state import SUFFIX, load_state_dir, save_state_dir
from zswapd.wire_server import WireSettings, start_wire_server

__all__ = ["Listener", "bind", "parse_listen", "serve"]

log = logging.getLogger("zswapd")

# File descriptors the daemon needs besides its connections: stdio, the event
# loop's epoll and wake-up pipe, up to four listening sockets, state files being
# written, the --metrics server's connections, and what libraries open.
FD_MARGIN = 256


@dataclass(frozen=True)
class Listener:
    """Where to listen: a TCP host and port, or a Unix socket path."""

    host: str = "127.0.0.1"
    port: int = 0
    path: str | None = None

    def url(self) -> str:
        if self.path is not None:
            return f"http+unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listener:
    """``HOST:PORT``, ``[V6]:PORT``, ``PORT`` or ``unix:PATH``.

    Raises:
        ConfigError: none of those.
    """
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ConfigError("unix: needs a path")
        return Listener(path=path)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad listen address {text!r}: use HOST:PORT or unix:PATH")
    return Listener(host=host, port=int(port))


def _claim_unix_path(path: str) -> None:
    """Remove a stale socket at ``path``; refuse a live one or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # left by a crash: nobody answers
        return
    finally:
        probe.close()
    raise ConfigError(f"another process is serving on {path}; stop it or choose another path")


def bind(listener: Listener, mode: int = 0o600) -> socket.socket:
    """A listening socket for ``listener`` (a Unix socket with ``mode``)."""
    if listener.path is not None:
        _claim_unix_path(listener.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # umask first so the socket is never, even briefly, wider than mode.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(listener.path)
        finally:
            os.umask(old)
        os.chmod(listener.path, mode)
    else:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        # proto must say TCP: asyncio disables Nagle on accepted connections only
        # when it does, and with Nagle on, a response written in two parts waits
        # for the client's delayed ACK, 40 ms a request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {listener.url()}: {exc}") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class _Saver:
    """Writes every pool to the state directory: on demand and periodically."""

    def __init__(
        self,
        registry: PoolRegistry,
        directory: Path,
        interval: float,
        devices: DeviceRegistry,
        preserve: frozenset[str] = frozenset(),
    ) -> None:
        self.registry = registry
        self.directory = directory
        self.interval = interval
        # Files named like the configured devices: left in place, never deleted.
        self.preserve = preserve
        # Device pools are never saved, however the device was made (flag, file or
        # HTTP): a block device starts empty, as zram does.
        self.devices = devices

    def save(self) -> None:
        names = self.registry.names()
        skip = set(self.devices.names())  # after names(): a device made between is skipped
        pools = [self.registry.get(n) for n in names if n not in skip]
        written = save_state_dir(pools, self.directory, preserve=self.preserve)
        log.info("saved %s to %s", count(len(written), "pool"), self.directory)

    async def periodic(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await run_in_thread(self.save)
            except Exception:  # keep serving; the next snapshot may succeed
                log.exception("periodic snapshot failed")


class _Server(uvicorn.Server):
    """uvicorn's server, announcing itself once it accepts requests.

    The line is printed after startup, when uvicorn's SIGTERM/SIGINT handlers
    are in place, so a parent that signals right after reading it gets a
    graceful stop, never the default (fatal) one.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        ready_lines: list[str],
        wire: tuple[socket.socket, PoolRegistry, WireSettings] | None = None,
        saver: _Saver | None = None,
        nbd: tuple[socket.socket, DeviceRegistry, Any] | None = None,
    ) -> None:
        super().__init__(config)
        self._nbd = nbd
        self._nbd_server: asyncio.Server | None = None
        self._ready_lines = ready_lines
        self._wire = wire
        self._wire_server: asyncio.Server | None = None
        self._saver = saver
        self._snapshots: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._wire is not None:
            self._wire_server = await start_wire_server(*self._wire)
        if self._nbd is not None:
            self._nbd_server = await start_nbd_server(*self._nbd)
        if self._saver is not None and self._saver.interval:
            self._snapshots = asyncio.get_running_loop().create_task(self._saver.periodic())
        # Memory freed after a burst of requests goes back to the system.
        self._trimmer = asyncio.get_running_loop().create_task(trim_when_idle(thread_jobs))
        # Lines a parent process can wait for (tests and scripts do).
        for line in self._ready_lines:
            print(line, file=sys.stderr, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._wire_server is not None:
            self._wire_server.close()
        if self._nbd_server is not None:
            self._nbd_server.close()
        await super().shutdown(sockets=sockets)


def open_files_needed(settings: ServerSettings) -> int:
    """Descriptors for every connection cap at once: max_connections per frontend run
    (HTTP always, the wire protocol and NBD when asked for), one backing file for
    each of --max-pools pools and devices, plus FD_MARGIN."""
    frontends = 1 + (settings.unix_socket is not None) + (settings.nbd is not None)
    # HTTP's lingering closes hold descriptors beyond its cap, at most linger_cap.
    lingering = linger_cap(settings.max_connections)
    backing = settings.max_pools or 0
    return frontends * settings.max_connections + lingering + backing + FD_MARGIN


def fit_open_files(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as nginx and Redis do).

    Raises:
        ConfigError: ``needed`` descriptors do not fit under the hard limit: refuse
            to start rather than fail every frontend once connections pile up.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"the connection caps need {needed} open files (--max-connections per frontend, "
            f"a quarter more for HTTP's lingering closes, a backing file per --max-pools, "
            f"+ {FD_MARGIN}), but RLIMIT_NOFILE allows {hard}: raise it (ulimit -n, "
            "systemd LimitNOFILE=) or lower --max-connections"
        )
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def start_metrics_server(host: str, port: int, registry: Any) -> int:
    """prometheus-client's own small server for /metrics alone (a thread); its port."""
    try:
        server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # a busy port: one line, as for the HTTP listener
        raise ConfigError(f"--metrics: cannot listen on {host}:{port}: {exc.strerror}") from exc
    return int(server.server_address[1])


def _apply_given_settings(
    pool: PagePool, settings: ServerSettings, config: PoolConfig | None, state_dir: Path
) -> None:
    """Give a restored pool the settings given now (flags, environment, config file).

    Those that can change live take the given value; the others stay as saved
    (the pages were stored with them), and any given differently is reported in
    one line.  Defaults given by nobody count for nothing.
    """
    given = settings.pools.get(pool.name)
    if not given or config is None:
        return
    keys = {"limit_bytes" if k == "limit" else k for k in given}
    live = {k: getattr(config, k) for k in keys if k in LIVE_SETTINGS}
    changed = {k: v for k, v in live.items() if getattr(pool.config, k) != v}
    if changed:
        pool.set_live_settings(**changed)
        log.info(
            "pool %s restored; taken as given: %s",
            pool.name,
            ", ".join(f"{k} {v}" for k, v in sorted(changed.items())),
        )
    ignored = sorted(
        k for k in keys - set(LIVE_SETTINGS) if getattr(config, k) != getattr(pool.config, k)
    )
    if ignored:
        log.warning(
            "pool %s restored with %s; given %s ignored: a restored pool keeps the settings its "
            "pages were stored with (only %s follow flags and config on restore; remove "
            "%s to start it afresh)",
            pool.name,
            ", ".join(f"{k} {getattr(pool.config, k)}" for k in ignored),
            ", ".join(f"{k} {getattr(config, k)}" for k in ignored),
            ", ".join(LIVE_SETTINGS),
            state_dir / f"{pool.name}{SUFFIX}",
        )


def _remove_client_files(registry: PoolRegistry, devices: DeviceRegistry, saved: bool) -> None:
    """At shutdown, remove the backing files this daemon created for clients
    that no state file names (without --state-dir, or a device's: devices
    start empty): nothing could ever read them again."""
    kept_devices = set(devices.names())
    for name in registry.names():
        pool = registry.get(name)
        if pool.backing is not None and pool.backing_owned and (not saved or name in kept_devices):
            pool.close()  # unlinks the file it owns
            log.info("removed %s, the backing file of %s", pool.backing.path, name)


def _limits_line(settings: ServerSettings, registry: PoolRegistry, token: str | None) -> str:
    """What bounds every client: the server-wide memory limit (as given and in
    bytes), the pool cap, and whether a token is asked for."""
    limit_pages = registry.budget.limit_pages if registry.budget is not None else None
    given = str(settings.memory_limit).strip()
    if not limit_pages:
        memory = "none"
    elif given.endswith("%"):
        memory = f"{human(limit_pages * PAGE_SIZE)} ({given} of RAM)"
    else:
        memory = human(limit_pages * PAGE_SIZE)
    return (
        f"zswapd: memory limit {memory} for all pools and devices together, "
        f"max pools and devices {settings.max_pools}; "
        + ("a token is required" if token is not None else "no token required (none set)")
    )


def _inventory(registry: PoolRegistry, devices: DeviceRegistry) -> list[str]:
    """The banner's first lines: the version and which allocator, page store loops
    and kernel lz4 run (compiled or pure Python, and why: a pure lz4 compresses a
    page in milliseconds), then each pool and device as configured."""
    device_names = set(devices.names())
    lines = [
        f"zswapd: zswapd {__version__}, pid {os.getpid()}, allocator: {allocator.describe()}, "
        f"page store: {fastpath.describe()}, kernel lz4: {backend_lz4.IMPLEMENTATION}"
    ]
    for name in registry.names():
        if name in device_names:
            continue
        pool = registry.get(name)
        cfg = pool.config.to_dict()
        restored = f", {count(pool.stored_pages, 'page')} restored" if pool.stored_pages else ""
        lines.append(
            f"zswapd: pool {name}: {algorithm(cfg)}, {cfg['allocator']}, "
            f"limit {limit(cfg)}{restored}"
        )
    for name in devices.names():
        device = devices.get(name)
        cfg = device.pool.config.to_dict()
        lines.append(
            f"zswapd: device {name}: {human(device.size)}, {algorithm(cfg)}, limit {limit(cfg)}"
        )
    return lines


def _nbd_uris(listener: Listener, port: int, names: list[str]) -> list[str]:
    """Each device's NBD URI (the export name is the device's), or the server's if none.

    As libnbd writes them (nbdinfo, nbdcopy, qemu-img take them as they are):
    ``nbd+unix:///NAME?socket=/abs/path`` or ``nbd://HOST:PORT/NAME``.
    """
    if listener.path is not None:
        socket_path = os.path.abspath(listener.path)
        return [f"nbd+unix:///{n}?socket={socket_path}" for n in names or [""]]
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return [f"nbd://{host}:{port}/{n}" for n in names or [""]]


def serve(settings: ServerSettings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="zswapd: %(message)s")
    fit_open_files(open_files_needed(settings))
    nbd_on_tcp = settings.nbd is not None and parse_listen(settings.nbd).path is None
    if nbd_on_tcp and settings.auth_token_file is not None:
        # NBD carries no token: on TCP every local user would get past it.
        raise ConfigError(
            "--nbd on TCP cannot be used with --auth-token-file (NBD has no token, so "
            "any local user could read every device): use --nbd unix:PATH (mode 0600)"
        )
    # Every pool and device charges one budget (--memory-limit), at most --max-pools.
    registry = registry_for(settings)
    pool_configs = settings.pool_configs()  # checked once, before any state is read
    state_dir = Path(settings.state_dir) if settings.state_dir is not None else None
    if state_dir is not None:
        # A torn or corrupted file raises StateError: refuse to start, load nothing.
        device_names = frozenset(settings.devices)
        for name in sorted(device_names):
            if (state_dir / f"{name}{SUFFIX}").exists():
                log.warning(
                    "%s names the device %s: not loaded (a device starts empty) and left in "
                    "place; rename or remove it to restore that pool",
                    state_dir / f"{name}{SUFFIX}",
                    name,
                )
        restored = load_state_dir(
            state_dir,
            budget=registry.budget,
            arena_pages=registry.arena_pages,
            skip=device_names,
        )
        for pool in restored:
            registry.adopt(pool)
            _apply_given_settings(pool, settings, pool_configs.get(pool.name), state_dir)
            log.info("restored pool %s: %s", pool.name, count(pool.stored_pages, "page"))
    for name, pool_config in pool_configs.items():
        if name not in registry:
            registry.create(name, pool_config)
    devices = DeviceRegistry(registry)
    for name, (size, device_config) in settings.device_configs().items():
        devices.create(name, size, device_config)
    if settings.devices and settings.nbd is None:
        log.warning(
            "devices %s have no NBD listener: nothing can read or write them; add --nbd",
            ", ".join(sorted(settings.devices)),
        )
    token = settings.token()
    listener = parse_listen(settings.http)
    if not listener.loopback and token is None:
        log.warning(
            "WARNING: listening on %s, beyond loopback, WITHOUT a token: anyone who can "
            "reach it can read and free every page. Set --auth-token-file.",
            listener.url(),
        )
    sock = bind(listener, settings.socket_mode)
    if listener.port == 0 and listener.path is None:
        listener = Listener(host=listener.host, port=sock.getsockname()[1])
    wire_path = settings.unix_socket
    bound: list[str] = [p for p in (listener.path,) if p is not None]
    try:
        wire = None
        # Printed once every frontend listens: what is served, and where (real
        # addresses: the port bound for port 0, absolute socket paths).
        ready = _inventory(registry, devices)
        ready.insert(1, _limits_line(settings, registry, token))
        app = create_app(
            registry,
            ApiSettings(max_pages_per_request=settings.max_pages_per_request, token=token),
            devices,
        )
        metrics = app.state.metrics
        if wire_path is not None:
            wire_sock = bind(Listener(path=wire_path), settings.socket_mode)
            bound.append(wire_path)
            wire_settings = WireSettings(
                max_pages_per_request=settings.max_pages_per_request,
                max_connections=settings.max_connections,
                token=token,
                observe=metrics.observe,
                handshake_timeout=settings.handshake_timeout,
                max_stale_handles=settings.max_stale_handles,
            )
            wire = (wire_sock, registry, wire_settings)
            ready.append(
                f"zswapd: serving the wire protocol on unix://{os.path.abspath(wire_path)}"
            )
        if settings.metrics is not None:
            m = parse_listen(settings.metrics)
            if m.path is not None:
                raise ConfigError("--metrics takes HOST:PORT")
            port = start_metrics_server(m.host, m.port, metrics.registry)
            ready.append(f"zswapd: serving metrics on http://{m.host}:{port}/metrics")
        uv_config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=30,
            # Deadlines on heads and bodies, and the connection cap (past it the
            # longest-idle connection makes room): see zswapd.http_protocol.
            http=protocol_class(
                HttpLimits(
                    max_connections=settings.max_connections,
                    header_timeout=settings.header_timeout,
                    max_stale_handles=settings.max_stale_handles,
                )
            ),
        )
        nbd = None
        if settings.nbd is not None:
            nbd_listener = parse_listen(settings.nbd)
            nbd_sock = bind(nbd_listener, settings.socket_mode)
            nbd_port = 0 if nbd_listener.path is not None else nbd_sock.getsockname()[1]
            uris = _nbd_uris(nbd_listener, nbd_port, devices.names())
            # Devices made later over HTTP are told their URI too; braces
            # doubled so that a socket path holding one survives format().
            template = _nbd_uris(nbd_listener, nbd_port, ["\0"])[0]
            app.state.nbd_uri = (
                template.replace("{", "{{").replace("}", "}}").replace("\0", "{name}")
            )
            if nbd_listener.path is not None:
                bound.append(nbd_listener.path)
            elif not nbd_listener.loopback and token is None:
                log.warning("WARNING: NBD on %s, beyond loopback: NBD has no token", uris[0])
            nbd_settings = NbdSettings(
                max_connections=settings.max_connections,
                handshake_timeout=settings.handshake_timeout,
                observe=metrics.observe,
            )
            nbd = (nbd_sock, devices, nbd_settings)
            if devices.names():
                ready += [f"zswapd: serving NBD on {uri}" for uri in uris]
            else:
                ready.append(f"zswapd: serving NBD on {uris[0]} (no devices yet)")
        saver = None
        if state_dir is not None:
            saver = _Saver(
                registry,
                state_dir,
                settings.snapshot_interval,
                devices,
                preserve=frozenset(settings.devices),
            )
            ready.append(f"zswapd: state in {state_dir.resolve()}")
        # The HTTP line last: a parent waiting for it knows everything else is up.
        shown = listener if listener.path is None else Listener(path=os.path.abspath(listener.path))
        ready.append(f"zswapd: serving HTTP on {shown.url()}")
        server = _Server(uv_config, ready, wire, saver, nbd)
        # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to
        # whatever handler was there before; with these, that re-raise is a no-op
        # and the daemon cleans up and exits 0 instead of dying of the signal.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        server.run(sockets=[sock])
        if saver is not None:
            # After in-flight requests finished: everything acknowledged is saved.
            saver.save()
        # Devices are never saved: a backing file made for a client's device
        # goes now, or it would be left behind, unreachable, at every restart.
        devices.close()
        _remove_client_files(registry, devices, saved=saver is not None)
    finally:
        sock.close()
        for path in bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    print("zswapd: stopped", file=sys.stderr, flush=True)
    return 0
