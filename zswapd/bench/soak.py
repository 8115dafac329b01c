"""``zswapd bench soak``: many clients, both transports, every byte checked.

N client threads (alternately HTTP and the wire protocol) run for T seconds
against one daemon (started here unless ``--url``/``--wire`` name one), each
with its own model of what it stored: store batches of real pages, load and
compare every byte, free, now and then compact.  Each client keeps its working
set near ``working_set`` pages, so once it is stored the daemon's RSS should
stay flat; RSS is sampled every second.  Reported: operations, errors,
mismatches, and RSS over time.
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

__all__ = ["render", "run"]


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, int] = {"store": 0, "load": 0, "free": 0, "compact": 0}
        self.pages = 0
        self.errors: list[str] = []
        self.mismatches = 0


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
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Soak a daemon started here, or the one(s) at ``urls`` (then no RSS is taken)."""
    say = progress or (lambda msg: None)
    proc = None
    if urls:
        targets = [urls[i % len(urls)] for i in range(clients)]
    else:
        tmp = tempfile.mkdtemp(prefix="zswapd-soak-")
        wire = os.path.join(tmp, "w.sock")
        proc, http_url = start_daemon("--unix-socket", wire, "--compressor", "lz4")
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
    start = time.monotonic()
    try:
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            now = time.monotonic()
            if proc is not None and now < deadline:  # not the final checks' large answers
                rss.append((round(now - start, 1), rss_of(proc.pid)))
            say(f"soak: {now - start:.0f}/{seconds:.0f} s, {sum(tally.ops.values())} ops")
            time.sleep(1)
        for th in threads:
            th.join()
    finally:
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
            f"RSS growth over the second half: {result['rss_second_half_growth'] / 2**20:.1f} MiB",
            format_table(
                ["seconds", "daemon RSS MiB"], [[t, f"{r / 2**20:.1f}"] for t, r in picks]
            ),
        ]
    )
