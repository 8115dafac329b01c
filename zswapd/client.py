"""The Python client: ``Client(url)`` over HTTP, on TCP or a Unix socket.

``http://HOST:PORT`` and ``http+unix:PATH`` speak the HTTP API through one
reused connection (httpx); ``unix:PATH`` speaks the wire protocol
(docs/protocol.md), pipelined.  With no URL, :func:`default_url`: $ZSWAPD_URL, else
the systemd unit's socket if it exists, else ``http://127.0.0.1:7415``.  Large
stores, loads and frees are cut into requests of at most
``batch_pages`` pages (the server's default cap is 1024) and put back together,
so a caller can hand over any number of pages at once.  Errors come back as the
same exception classes the store raises (``PoolLimitError``, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from zswapd.closing import Closing
from zswapd.errors import UnauthorizedError, ZswapdError, error_class
from zswapd.pool import PAGE_SIZE, split_pages
from zswapd.protocol import ProtocolError
from zswapd.wire_client import WireClient

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TCP",
    "Client",
    "UnauthorizedError",
    "default_url",
    "socket_path",
]

# Where the shipped systemd unit serves HTTP (deploy/systemd/zswapd.service).
# Tried first: a client that went to the TCP port instead would talk to whoever
# bound it (any local user may) and hand them its token.
DEFAULT_SOCKET = "/run/zswapd/http.sock"
# Where ``zswapd serve`` listens with no flags (settings.DEFAULT_HTTP).
DEFAULT_TCP = "http://127.0.0.1:7415"


# The most of an error's detail a client repeats: zswapd's own are a line or two;
# a longer one (another server's, a hostile one's) is cut, never printed whole.
MAX_DETAIL = 1000


def default_url() -> str:
    """The daemon to talk to when no URL is given: $ZSWAPD_URL, else the systemd
    unit's socket if it exists, else ``serve``'s default TCP address."""
    url = os.environ.get("ZSWAPD_URL")
    if url:
        return url
    if os.path.exists(DEFAULT_SOCKET):
        return f"http+unix://{DEFAULT_SOCKET}"
    return DEFAULT_TCP


def _seg(name: str) -> str:
    """A pool or device name as one URL path segment: whatever it holds (``/``,
    ``?``, control characters from a hostile listing) stays inside it."""
    return quote(str(name), safe="")


def socket_path(url: str, scheme: str) -> str:
    """The socket path of ``scheme`` + ``PATH`` or ``scheme`` + ``//PATH``.

    ``unix:wire.sock`` (relative, as ``serve --unix-socket`` takes it),
    ``unix:/run/z.sock`` and ``unix:///run/z.sock`` all name a path.
    ``unix://host/path`` is refused: read as a URL it names a host, read as a
    path it would be the relative ``host/path``; neither is what was meant.

    Raises:
        ValueError: no path, or an authority (a host) before it.
    """
    rest = url[len(scheme) :]
    path = rest[2:] if rest.startswith("//") else rest
    if not path:
        raise ValueError(f"{url!r} names no socket path: use {scheme}PATH")
    if rest.startswith("//") and not path.startswith("/"):
        raise ValueError(f"{url!r}: unix URLs take a path: {scheme}PATH or {scheme}///ABS/PATH")
    return path


class Client(Closing):
    """A connection to a zswapd daemon.

    Args:
        url: ``http://HOST:PORT``, ``http+unix:PATH`` (HTTP) or ``unix:PATH``
            (the wire protocol: pages, stats and compact only; writeback, pool
            settings and devices are HTTP's).  PATH may be relative, and may
            follow ``//`` as in ``unix:///run/zswapd.sock``.  None (the
            default): :func:`default_url`, as the command line.
        token: bearer token, if the daemon wants one.
        batch_pages: pages per request for large stores and loads (default: the
            server's cap, asked once).
        timeout: seconds per request.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        batch_pages: int | None = None,
        timeout: float = 60.0,
    ) -> None:
        if batch_pages is not None and batch_pages < 1:
            raise ValueError("batch_pages must be >= 1")
        self._batch_pages = batch_pages
        if url is None:
            url = default_url()
        self.url = url
        self._wire: WireClient | None = None
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if url.startswith("http+unix:"):
            transport = httpx.HTTPTransport(uds=socket_path(url, "http+unix:"))
            self._http = httpx.Client(
                transport=transport, base_url="http://zswapd", headers=headers, timeout=timeout
            )
        elif url.startswith(("http://", "https://")):
            self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        elif url.startswith("unix:"):
            try:
                self._wire = WireClient(socket_path(url, "unix:"), token=token)
            except ProtocolError as exc:
                # Most likely serve's --http unix:PATH, which speaks HTTP.
                raise ZswapdError(
                    f"{url} does not answer in the wire protocol ({exc}); for an HTTP "
                    "socket (serve --http unix:PATH) use http+unix:PATH"
                ) from exc
            return
        else:
            raise ValueError(
                f"unsupported URL {url!r}: use http://HOST:PORT, http+unix:PATH or unix:PATH"
            )

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        else:
            self._http.close()

    @property
    def over_wire(self) -> bool:
        """Whether this client speaks the wire protocol (pages, stats, compact only)."""
        return self._wire is not None

    def _http_only(self, what: str) -> None:
        if self._wire is not None:
            raise ZswapdError(
                f"{what} needs the HTTP API (http:// or http+unix:): "
                "the wire protocol has no such request"
            )

    # -- plumbing --------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, detail = body["error"], body["detail"]
            except (ValueError, KeyError, TypeError):
                code, detail = "internal", response.text[:200]
            cls = error_class(str(code))
            detail = str(detail)
            if len(detail) > MAX_DETAIL:  # a server's word, not a page of it
                detail = detail[:MAX_DETAIL] + "..."
            raise cls(f"{response.status_code}: {detail}")
        return response

    @property
    def batch_pages(self) -> int:
        """Pages per request: as given, or the server's cap (asked once)."""
        if self._batch_pages is None:
            self._batch_pages = int(self.health().get("max_pages_per_request", 1024))
        return self._batch_pages

    def _batches(self, items: Sequence[Any]) -> Iterable[Sequence[Any]]:
        step = self.batch_pages
        for i in range(0, len(items), step):
            yield items[i : i + step]

    # -- pages ------------------------------------------------------------------------

    def store(self, pages: Any, pool: str = "default") -> list[int]:
        """Store pages (``k * 4096`` bytes, or 4096-byte items); their handles, in order.

        Each request is all or nothing; if a later request of a large store
        fails, the pages stored by the earlier ones are freed before raising.
        """
        batch = split_pages(pages)
        if self._wire is not None:
            return self._wire.store(batch, pool)
        handles: list[int] = []
        try:
            for part in self._batches(batch):
                r = self._request(
                    "POST",
                    f"/v1/pools/{_seg(pool)}/pages",
                    content=b"".join(part),
                    headers={"content-type": "application/octet-stream"},
                )
                handles += r.json()["handles"]
        except BaseException:
            # All or nothing for the caller too: undo the requests that worked
            # (best effort: the connection itself may be what failed).
            if handles:
                with contextlib.suppress(Exception):
                    self.free(handles, pool=pool)
            raise
        return handles

    def load(self, handles: Sequence[int], pool: str = "default") -> list[bytes]:
        """The pages of ``handles``, in order."""
        if self._wire is not None:
            return self._wire.load(handles, pool)
        out: list[bytes] = []
        for part in self._batches(list(handles)):
            r = self._request("POST", f"/v1/pools/{_seg(pool)}/pages:load", json={"handles": part})
            data = r.content
            if len(data) != PAGE_SIZE * len(part):
                raise ZswapdError(f"server sent {len(data)} bytes for {len(part)} pages")
            out += [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
        return out

    def load_one(self, handle: int, pool: str = "default") -> bytes:
        if self._wire is not None:
            return self._wire.load([handle], pool)[0]
        return self._request("GET", f"/v1/pools/{_seg(pool)}/pages/{handle}").content

    def free(self, handles: Sequence[int], pool: str = "default") -> None:
        """Free the pages of ``handles``."""
        if self._wire is not None:
            self._wire.free(handles, pool)
            return
        for part in self._batches(list(handles)):
            self._request("POST", f"/v1/pools/{_seg(pool)}/pages:free", json={"handles": part})

    # -- pools ------------------------------------------------------------------------

    def stats(self, pool: str = "default") -> dict[str, Any]:
        if self._wire is not None:
            return self._wire.stats(pool)
        result: dict[str, Any] = self._request("GET", f"/v1/pools/{_seg(pool)}/stats").json()
        return result

    def compact(self, pool: str = "default") -> int:
        if self._wire is not None:
            return self._wire.compact(pool)
        released: int = self._request("POST", f"/v1/pools/{_seg(pool)}/compact").json()[
            "pages_released"
        ]
        return released

    def recompress(self, pool: str = "default", **params: Any) -> dict[str, int]:
        self._http_only("recompress")
        result: dict[str, int] = self._request(
            "POST", f"/v1/pools/{_seg(pool)}/recompress", json=params
        ).json()
        return result

    def writeback(
        self,
        pool: str = "default",
        *,
        type: str,
        idle_seconds: float | None = None,
        max_pages: int | None = None,
    ) -> dict[str, Any]:
        """Write pages of ``pool`` back to its backing file (zram's ``writeback``).

        Returns:
            written_back, candidates, stopped (why it stopped early, or None),
            error, writeback_limit (pages it may still write; None: no limit).
        """
        self._http_only("writeback")
        body: dict[str, Any] = {"type": type}
        if idle_seconds is not None:
            body["idle_seconds"] = idle_seconds
        if max_pages is not None:
            body["max_pages"] = max_pages
        result: dict[str, Any] = self._request(
            "POST", f"/v1/pools/{_seg(pool)}/writeback", json=body
        ).json()
        return result

    def pools(self) -> list[str]:
        self._http_only("listing pools")
        names: list[str] = self._request("GET", "/v1/pools").json()["pools"]
        return names

    def create_pool(self, name: str, **config: Any) -> dict[str, Any]:
        self._http_only("creating a pool")
        result: dict[str, Any] = self._request(
            "PUT",
            f"/v1/pools/{_seg(name)}",
            content=json.dumps(config),
            headers={"content-type": "application/json"},
        ).json()
        return result

    def update_pool(self, name: str, **settings: Any) -> dict[str, Any]:
        """Change settings a pool takes live (limit_bytes, accept_threshold_percent,
        huge_policy, writeback_limit: zram's ``echo N > writeback_limit``)."""
        self._http_only("changing a pool's settings")
        result: dict[str, Any] = self._request(
            "PATCH", f"/v1/pools/{_seg(name)}", json=settings
        ).json()
        return result

    def remove_pool(self, name: str) -> None:
        self._http_only("removing a pool")
        self._request("DELETE", f"/v1/pools/{_seg(name)}")

    # -- devices (zram's block devices, exported over NBD) ------------------------------

    def devices(self) -> list[str]:
        self._http_only("listing devices")
        names: list[str] = self._request("GET", "/v1/devices").json()["devices"]
        return names

    def create_device(self, name: str, size: int, **config: Any) -> dict[str, Any]:
        """A new device of ``size`` bytes (a multiple of 4096) over a pool of ``config``."""
        self._http_only("creating a device")
        result: dict[str, Any] = self._request(
            "PUT", f"/v1/devices/{_seg(name)}", json={"size": size, **config}
        ).json()
        return result

    def remove_device(self, name: str) -> None:
        self._http_only("removing a device")
        self._request("DELETE", f"/v1/devices/{_seg(name)}")

    def device_stats(self, name: str) -> dict[str, Any]:
        """mm_stat, io_stat, bd_stat and classes of a device (its pool's config is
        in ``stats(name)``: a device's pool has the device's name)."""
        self._http_only("device stats")
        result: dict[str, Any] = self._request("GET", f"/v1/devices/{_seg(name)}/stats").json()
        return result

    # -- shadows (what `zswapd shadow` reports of live processes) ------------------------

    def report_shadow(self, name: str, report: dict[str, Any]) -> None:
        """Replace shadow ``name``'s report (``PUT /v1/shadows/{name}``): its pool,
        detection, interval_seconds, cold_after_seconds, [expires_seconds] and
        processes (each with zswapd.swapsim.ProcessFigures's fields)."""
        self._http_only("reporting a shadow")
        self._request("PUT", f"/v1/shadows/{_seg(name)}", json=report)

    def shadows(self) -> dict[str, Any]:
        """Every live shadow's last report by name, each with its ``age_seconds``."""
        self._http_only("listing shadows")
        listed: dict[str, Any] = self._request("GET", "/v1/shadows").json()["shadows"]
        return listed

    def remove_shadow(self, name: str) -> None:
        """Forget shadow ``name``'s report (UnknownShadowError if there is none)."""
        self._http_only("removing a shadow")
        self._request("DELETE", f"/v1/shadows/{_seg(name)}")

    def health(self) -> dict[str, Any]:
        self._http_only("health")
        result: dict[str, Any] = self._request("GET", "/healthz").json()
        return result
