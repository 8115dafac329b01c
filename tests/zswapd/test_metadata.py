"""Per-page metadata under --memory-limit, on a real daemon: a pool's table of
entries (same-filled pages included) and a device's slot-table leaves are
charged to the server's budget, refused whole past it, given back when freed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import PageBudget
from tests.zswapd import nbd_client
from tests.zswapd.daemon import start_daemon
from tests.zswapd.helpers import metric_value
from zswapd.client import Client
from zswapd.device import LEAF_SLOTS, SlotTable
from zswapd.entries import ENTRIES_PER_PAGE, ENTRY_BYTES, EntryTable
from zswapd.errors import MemoryLimitError
from zswapd.nbd_protocol import Cmd

PAGE = 4096
MiB = 1 << 20
LIMIT = 4 * MiB
ZEROS = bytes(1024 * PAGE)  # one wire request's most of zero pages
LEAF_BYTES = LEAF_SLOTS * PAGE  # device bytes one leaf covers (2 MiB)
ENOSPC = 28


def _rss(pid: int) -> int:
    """The process's resident set, bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _server(h: httpx.Client, pool: str = "default") -> dict[str, int]:
    figures: dict[str, int] = h.get(f"/v1/pools/{pool}/stats").json()["server"]
    return figures


def test_the_charge_covers_the_tables_real_bytes() -> None:
    budget = PageBudget()
    table = EntryTable(seed=1, budget=budget)
    for n in range(5000):
        table.add(0, n, 0, 0)
        # Columns and handle table together, 27 bytes a slot, 151 slots a page.
        assert table.nbytes <= ENTRY_BYTES * table.slots <= budget.used * PAGE
        assert budget.used == table.charged == -(-(table.slots - 1) // ENTRIES_PER_PAGE)
    assert (ENTRY_BYTES, ENTRIES_PER_PAGE) == (27, 151)
    handles = [table.handle_of(s) for s in table.live_slots()]
    for h in handles[:4000]:
        table.remove(h)
    table.trim()  # 4000 freed, but live slots above them: the charge stays
    assert budget.used == table.charged > 0
    for h in handles[4000:]:
        table.remove(h)
    table.trim()
    assert budget.used == 0 and table.slots == 1


def test_zero_pages_stop_at_the_memory_limit_and_resume_once_freed(tmp_path: Path) -> None:
    sock = str(tmp_path / "wire.sock")
    d = start_daemon("--memory-limit", "4M", "--unix-socket", sock)
    try:
        with Client(f"unix://{sock}") as c, httpx.Client(base_url=d.url, timeout=30) as h:
            c.store(ZEROS)  # warm up: first-request allocations are not the table's
            c.free(c.store(ZEROS[:PAGE]))
            before = _rss(d.proc.pid)
            handles: list[int] = []
            refusal = None
            # 4 MiB pays for 1024 x 151 entries: refused within 152 batches of 1024.
            for _ in range(200):
                try:
                    handles += c.store(ZEROS)
                except MemoryLimitError as exc:
                    refusal = exc
                    break
            assert refusal is not None, f"{len(handles)} zero pages stored, never refused"
            assert 100 * 1024 <= len(handles) <= 1024 * ENTRIES_PER_PAGE
            # The table held is the limit's 4 MiB, and no more (without the charge
            # it would grow to 16,777,215 entries, 496 MiB, before a refusal).
            grown = _rss(d.proc.pid) - before
            assert grown < 16 * MiB, grown
            # Refused again and again (RSS not measured here: what a refused wire
            # request leaves behind is issue 12's item 1, fixed on its own).
            for _ in range(20):
                with pytest.raises(MemoryLimitError):
                    c.store(ZEROS)
            stats = h.get("/v1/pools/default/stats").json()
            mm, server = stats["mm_stat"], stats["server"]
            # The kernel's figures are unchanged: zero pages take no allocator memory.
            assert mm["same_pages"] == len(handles) + 1024  # the warm-up's batch too
            assert mm["mem_used_total"] == 0
            assert LIMIT - 16 * PAGE < server["memory_used"] <= LIMIT
            assert server["memory_used"] == stats["metadata"]["bytes"]
            assert stats["counters"]["memory_limit_hit"] == 21 * 1024
            text = h.get("/metrics").text
            table = metric_value(text, "zswapd_metadata_bytes", pool="default")
            assert table == server["memory_used"]
            # Freed, the table gives its pages back and stores go on.
            for i in range(0, len(handles), 1024):
                c.free(handles[i : i + 1024])
            assert _server(h)["memory_used"] < 16 * PAGE  # the warm-up's 1024 pages
            c.store(ZEROS)
    finally:
        assert d.stop() == 0


def test_a_removed_pool_gives_its_table_back() -> None:
    d = start_daemon("--memory-limit", "4M")
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            assert _server(h)["memory_used"] == 0
            assert h.put("/v1/pools/p", json={}).status_code == 201
            r = h.post("/v1/pools/p/pages", content=bytes(256 * PAGE))
            assert r.status_code == 201, r.text
            used = _server(h)["memory_used"]
            assert used > 0  # zero pages: the table's pages alone
            assert used == h.get("/v1/pools/p/stats").json()["metadata"]["bytes"]
            assert h.delete("/v1/pools/p").status_code == 204
            assert _server(h)["memory_used"] == 0
    finally:
        assert d.stop() == 0


def test_a_sparse_device_stops_at_the_memory_limit_whole(tmp_path: Path) -> None:
    sock = str(tmp_path / "nbd.sock")
    d = start_daemon("--memory-limit", "4M", "--nbd", f"unix:{sock}")
    try:
        with httpx.Client(base_url=d.url, timeout=30) as h:
            r = h.put("/v1/devices/sparse", json={"size": 1 << 40, "compressor": "lz4"})
            assert r.status_code == 201, r.text
            s = nbd_client.open_device(sock, "sparse")
            page = b"\x01" * PAGE  # same-filled: no allocator memory, only the leaf
            written = 0
            # One page in each 2 MiB: one leaf each, 4 MiB pays for fewer than 1024.
            for n in range(1100):
                try:
                    nbd_client.request(s, Cmd.WRITE, n * LEAF_BYTES, PAGE, page)
                except OSError as exc:
                    assert exc.errno == ENOSPC
                    break
                written += 1
            assert 900 < written < 1024, written
            stats = h.get("/v1/devices/sparse/stats").json()
            assert stats["slot_table"]["leaves"] == written
            server = _server(h, "sparse")
            assert server["memory_used"] <= LIMIT
            # A write across two new leaves fails whole: neither half is there.
            far = 1050 * LEAF_BYTES - PAGE  # the end of a leaf never made
            with pytest.raises(OSError):
                nbd_client.request(s, Cmd.WRITE, far, 2 * PAGE, page * 2)
            assert nbd_client.request(s, Cmd.READ, far, 2 * PAGE) == bytes(2 * PAGE)
            after = h.get("/v1/devices/sparse/stats").json()
            assert after["slot_table"]["leaves"] == written
            assert after["mm_stat"]["orig_data_size"] == written * PAGE
            assert after["io_stat"]["failed_writes"] == 2
            assert _server(h, "sparse")["memory_used"] == server["memory_used"]
            # Written slots still read back; trimming one frees its leaf for another.
            assert nbd_client.request(s, Cmd.READ, 0, PAGE) == page
            nbd_client.request(s, Cmd.TRIM, 0, PAGE)
            nbd_client.request(s, Cmd.WRITE, far + PAGE, PAGE, page)
            s.close()
            assert h.delete("/v1/devices/sparse").status_code == 204
            assert _server(h)["memory_used"] == 0
    finally:
        assert d.stop() == 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set", "clear", "reserve", "release"]),
            st.integers(0, 6 * LEAF_SLOTS),
            st.integers(0, 2 * LEAF_SLOTS),
        ),
        max_size=50,
    )
)
def test_a_slot_table_charges_one_page_per_leaf_held(ops: list[tuple[str, int, int]]) -> None:
    budget = PageBudget(4)
    table = SlotTable(budget)
    for op, slot, n in ops:
        try:
            if op == "set":
                table[slot] = n % 3
            elif op == "clear":
                table.clear(slot, slot + n)
            elif op == "reserve":
                table.reserve(slot, slot + n)
            else:
                table.release_empty(slot, slot + n)
        except MemoryLimitError:
            pass  # past 4 leaves: refused, nothing made
        assert budget.used == table.leaves <= 4
    table.close()
    assert budget.used == 0 == table.leaves
