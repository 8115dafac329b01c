"""``zswapd bench soak``: many clients, both transports, every byte checked.

N client threads (alternately HTTP and the wire protocol) run for T seconds
against one daemon (started here unless ``--url``/``--wire`` name one), each
with its own model of what it stored: store batches of real pages, load and
compare every byte, free, now and then compact.  Each client keeps its working
set near ``working_set`` pages, so once it is stored the daemon's RSS should
stay flat; RSS is sampled every second.  Reported: operations, errors,
mismatches, and RSS over time.

With ``pool_limit`` the daemon's pool is smaller than the clients' working
sets, so it spends the run at its limit, as a swap pool does: a store refused
with 507 (the pool's limit or the server's) is expected, counted apart from
errors, and the pool's fill is sampled with RSS.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from zswapd.bench.http import start_daemon
from zswapd.bench.stats import format_table, rss_of
from zswapd.client import Client
from zswapd.errors import PoolLimitError

__all__ = ["render", "run"]


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, int] = {"store": 0, "load": 0, "free": 0, "compact": 0}
        self.pages = 0
        self.errors: list[str] = []
        self.mismatches = 0
        self.refused = 0  # stores answered 507: the pool is full, as expected at a limit


def _client(
    url: str, pages: Sequence[bytes], seed: int, deadline: float, working_set: int, t: _Tally
) -> None:
    rng = random.Random(seed)
    model: dict[int, bytes] = {}
    try:
        c = Client(url)
    except Exception as exc:  # counted, not raised: the soak goes on
        with t.lock:
            t.errors.append(f"connect: {exc}")
        return
    with c:
        while time.monotonic() < deadline:
            roll = rng.random()
            try:
                if roll < 0.4 or not model:
                    batch = [pages[rng.randrange(len(pages))] for _ in range(rng.randint(1, 32))]
                    model.update(zip(c.store(batch), batch, strict=True))
                    op, n = "store", len(batch)
                elif roll < 0.8:
                    some = rng.sample(list(model), min(len(model), rng.randint(1, 64)))
                    got = c.load(some)
                    bad = sum(1 for h, p in zip(some, got, strict=True) if model[h] != p)
                    if bad:
                        with t.lock:
                            t.mismatches += bad
                    op, n = "load", len(some)
                elif roll < 0.995 or len(model) > working_set:
                    k = max(1, len(model) - working_set) if len(model) > working_set else 8
                    gone = rng.sample(list(model), min(len(model), k))
                    c.free(gone)
                    for h in gone:
                        del model[h]
                    op, n = "free", len(gone)
                else:
                    c.compact()
                    op, n = "compact", 0
            except PoolLimitError:
                with t.lock:
                    t.refused += 1
                continue
            except Exception as exc:
                with t.lock:
                    t.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with t.lock:
                t.ops[op] += 1
                t.pages += n
        # A last full check of everything this client still holds.
        if model:
            handles = list(model)
            try:
                got = c.load(handles)
                bad = sum(1 for h, p in zip(handles, got, strict=True) if model[h] != p)
                with t.lock:
                    t.mismatches += bad
                c.free(handles)
            except Exception as exc:
                with t.lock:
                    t.errors.append(f"final check: {exc}")


def run(
    pages: Sequence[bytes],
    *,
    clients: int = 8,
    seconds: float = 60,
    working_set: int = 2000,
    urls: Sequence[str] = (),
    pool_limit: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Soak a daemon started here, or the one(s) at ``urls`` (then no RSS is taken).

    ``pool_limit`` (a size such as "8M") starts the daemon with that pool limit.
    """
    say = progress or (lambda msg: None)
    proc = None
    if urls:
        targets = [urls[i % len(urls)] for i in range(clients)]
    else:
        tmp = tempfile.mkdtemp(prefix="zswapd-soak-")
        wire = os.path.join(tmp, "w.sock")
        limit = ("--pool-limit", pool_limit) if pool_limit else ()
        proc, http_url = start_daemon("--unix-socket", wire, "--compressor", "lz4", *limit)
        targets = [http_url if i % 2 == 0 else f"unix://{wire}" for i in range(clients)]
    urls = targets
    tally = _Tally()
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_client, args=(urls[i], pages, i, deadline, working_set, tally), daemon=True
        )
        for i in range(clients)
    ]
    rss: list[tuple[float, int]] = []
    fill: list[float] = []  # the pool's mem_used_total / mem_limit, each second
    http_urls = [u for u in urls if u.startswith("http")]
    watcher = Client(http_urls[0]) if http_urls else None
    start = time.monotonic()
    try:
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            now = time.monotonic()
            if proc is not None and now < deadline:  # not the final checks' large answers
                rss.append((round(now - start, 1), rss_of(proc.pid)))
            if watcher is not None and now < deadline:
                mm = watcher.stats()["mm_stat"]
                if mm["mem_limit"]:
                    fill.append(mm["mem_used_total"] / mm["mem_limit"])
            say(f"soak: {now - start:.0f}/{seconds:.0f} s, {sum(tally.ops.values())} ops")
            time.sleep(1)
        for th in threads:
            th.join()
    finally:
        if watcher is not None:
            watcher.close()
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    elapsed = time.monotonic() - start
    # "Once the working set is stored": compare the second half's RSS with its start.
    half = [r for t, r in rss if t >= seconds / 2]
    return {
        "clients": clients,
        "transports": {
            "http": sum(1 for u in urls if u.startswith("http")),
            "wire": sum(1 for u in urls if u.startswith("unix://")),
        },
        "seconds": elapsed,
        "ops": tally.ops,
        "ops_per_s": sum(tally.ops.values()) / elapsed,
        "pages_per_s": tally.pages / elapsed,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "mismatches": tally.mismatches,
        "refused": tally.refused,
        # Samples with the pool within a zspage or so of its limit (95%).
        "at_limit_share": sum(1 for f in fill if f >= 0.95) / len(fill) if fill else 0.0,
        "rss": rss,
        "rss_second_half_growth": (max(half) - half[0]) if half else 0,
    }


def render(result: dict[str, Any]) -> str:
    rss = result["rss"]
    picks = rss[:: max(1, len(rss) // 10)] + rss[-1:]
    return "\n".join(
        [
            f"soak: {result['clients']} clients ({result['transports']['http']} HTTP, "
            f"{result['transports']['wire']} wire) for {result['seconds']:.0f} s",
            f"operations {sum(result['ops'].values()):,} ({result['ops_per_s']:,.0f}/s, "
            f"{result['pages_per_s']:,.0f} pages/s): {result['ops']}",
            f"errors {result['errors']}, mismatches {result['mismatches']}",
            *(
                [
                    f"stores refused at the limit (507): {result['refused']:,} of "
                    f"{result['refused'] + result['ops']['store']:,}; pool at >= 95% of its "
                    f"limit in {result['at_limit_share']:.0%} of samples"
                ]
                if result.get("refused") or result.get("at_limit_share")
                else []
            ),
            f"RSS growth over the second half: {result['rss_second_half_growth'] / 2**20:.1f} MiB",
            format_table(
                ["seconds", "daemon RSS MiB"], [[t, f"{r / 2**20:.1f}"] for t, r in picks]
            ),
        ]
    )
