"""PagePool: zram's page semantics, limits, counters, recompression, threads."""

from __future__ import annotations

import dataclasses

import pytest

import compressors
from allocator import PageBudget
from tests.threads import run_threads
from tests.zswapd.daemon import start_daemon
from tests.zswapd.helpers import poor_page, random_page, same_page, text_page
from zswapd.client import Client
from zswapd.config import PoolConfig
from zswapd.errors import (
    CompressPoorError,
    ConfigError,
    InvalidRequestError,
    MemoryLimitError,
    PageSizeError,
    PoolExistsError,
    PoolLimitError,
    StaleHandleError,
    UnknownPoolError,
)
from zswapd.pool import PagePool
from zswapd.pools import PoolRegistry
from zswapd.recompression import secondary_index


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("algo", compressors.available())
@pytest.mark.parametrize("huge_policy", ["store", "reject"])
def test_process_memory_round_trips(
    algo: str, huge_policy: str, process_pages: list[bytes]
) -> None:
    pool = PagePool("p", PoolConfig(compressor=algo, huge_policy=huge_policy))
    pages = process_pages[::4]
    if huge_policy == "reject":
        # Store one page at a time: the poorly compressing ones are refused alone.
        handles, kept = [], []
        for page in pages:
            try:
                handles += pool.store(page)
                kept.append(page)
            except CompressPoorError:
                pass
        assert pool.stats().zswap.reject_compress_poor == len(pages) - len(kept)
        assert pool.mm_stat().huge_pages == 0
        pages = kept
    else:
        handles = pool.store(b"".join(pages))
    assert pool.load(handles) == pages
    pool.check_invariants()
    mm = pool.mm_stat()
    assert mm.orig_data_size == 4096 * len(pages)
    assert mm.compr_data_size < mm.orig_data_size / 1.5


def test_same_filled_detection_is_exact() -> None:
    pool = PagePool("p")
    zero, word = same_page(bytes(8)), same_page(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    almost = bytearray(zero)
    almost[-1] = 1
    short_period = same_page(b"\x01\x02\x03\x04")  # repeats every 4: also every 8
    not_word = same_page(b"\x01\x02\x03") + b"\x00"  # period 3: not an 8-byte word
    handles = pool.store([zero, word, bytes(almost), short_period, not_word[:4096]])
    mm = pool.mm_stat()
    assert mm.same_pages == 3
    assert mm.compr_data_size > 0 and pool.stats().zswap.same_filled_pages == 3
    assert pool._alloc.objs_used == 2  # same-filled pages take no allocator memory
    assert pool.load(handles) == [zero, word, bytes(almost), short_period, not_word[:4096]]


def test_huge_pages_are_stored_raw_and_counted() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4"))
    handles = pool.store([random_page(1), random_page(2), text_page(3)])
    mm = pool.mm_stat()
    assert mm.huge_pages == mm.huge_pages_since == 2
    assert mm.compr_data_size == 2 * 4096 + len(compressors.get("lz4").compress(text_page(3)))
    pool.free(handles[:1])
    mm = pool.mm_stat()
    assert mm.huge_pages == 1 and mm.huge_pages_since == 2


def test_reject_policy_refuses_the_whole_batch() -> None:
    pool = PagePool("p", PoolConfig(huge_policy="reject"))
    with pytest.raises(CompressPoorError):
        pool.store([text_page(1), random_page(2), random_page(3)])
    assert pool.stored_pages == 0 and pool.mm_stat().mem_used_total == 0
    assert pool.stats().zswap.reject_compress_poor == 2


@pytest.mark.parametrize(
    "bad",
    [b"", b"x" * 4095, b"x" * 4097, b"x" * 8191, [b"x" * 4096, b"x" * 10], [b"x" * 4096, "s"]],
)
def test_wrong_sizes_are_refused_and_change_nothing(bad: object) -> None:
    pool = PagePool("p")
    pool.store(text_page(1))
    before = pool.mm_stat()
    with pytest.raises(PageSizeError):
        pool.store(bad)  # type: ignore[arg-type]
    assert pool.mm_stat() == before


def test_stale_and_forged_handles_change_nothing() -> None:
    pool = PagePool("p")
    h1, h2 = pool.store([text_page(1), text_page(2)])
    pool.free([h1])
    before = pool.mm_stat()
    for bad in ([h1], [h2, h1], [h2 + 1], [-1], [2**60], ["1"]):
        with pytest.raises(StaleHandleError):
            pool.load(bad)  # type: ignore[arg-type]
        with pytest.raises(StaleHandleError):
            pool.free(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        pool.free([h2, h2])
    assert pool.mm_stat() == before
    assert pool.load([h2]) == [text_page(2)]


def test_limit_refuses_cleanly_and_counts() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", limit_bytes=64 * 4096))
    handles = []
    with pytest.raises(PoolLimitError):
        for i in range(1000):
            handles += pool.store([random_page(i)])
    assert len(handles) == 64
    before = (pool.mm_stat(), pool.stored_pages)
    with pytest.raises(PoolLimitError):
        pool.store([text_page(1), random_page(5000)])  # the batch fails as a whole
    after = pool.mm_stat()
    # As zram's: the peak the refused pages reached stays in mem_used_max.
    assert after.mem_used_max > before[0].mem_used_max
    assert (dataclasses.replace(after, mem_used_max=0), pool.stored_pages) == (
        dataclasses.replace(before[0], mem_used_max=0),
        before[1],
    )
    assert pool.stats().zswap.pool_limit_hit == 2
    assert pool.mm_stat().mem_used_total <= pool.mm_stat().mem_limit
    pool.free(handles[:1])
    pool.store([random_page(6000)])  # room again: no hysteresis by default
    pool.check_invariants()


def test_accept_threshold_hysteresis() -> None:
    cfg = PoolConfig(compressor="lz4", limit_bytes=20 * 4096, accept_threshold_percent=50)
    pool = PagePool("p", cfg)
    handles = [pool.store([random_page(i)])[0] for i in range(20)]
    with pytest.raises(PoolLimitError):
        pool.store([random_page(100)])
    pool.free(handles[:5])  # 15 of 20 pages: above 50%, still refusing
    with pytest.raises(PoolLimitError):
        pool.store([text_page(1)])
    pool.free(handles[5:11])  # 9 of 20 pages: below 50%, accepting again
    pool.store([text_page(2)])
    assert pool.stats().zswap.pool_limit_hit == 2


def test_every_counter_is_exact() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4"))
    text = [text_page(i) for i in range(10)]
    handles = pool.store([same_page(bytes(8))] * 3 + text + [random_page(1)])
    sizes = [len(compressors.get("lz4").compress(p)) for p in text]
    mm = pool.mm_stat()
    assert dataclasses.asdict(mm) == {
        "orig_data_size": 14 * 4096,
        "compr_data_size": sum(sizes) + 4096,
        "mem_used_total": pool._alloc.total_size_bytes,
        "mem_limit": 0,
        "mem_used_max": pool._alloc.total_size_bytes,
        "same_pages": 3,
        "pages_compacted": 0,
        "huge_pages": 1,
        "huge_pages_since": 1,
    }
    pool.load(handles[:5])
    pool.free(handles[:4])
    stats = pool.stats()
    assert dataclasses.asdict(stats.counters) == {
        "stored_pages_total": 14,
        "loaded_pages_total": 5,
        "freed_pages_total": 4,
        "memory_limit_hit": 0,
        "stale_handle_requests": 0,
        "loaded_same_pages": 3,
        "limit_hit_written_back": 0,
    }
    assert stats.mm_stat.same_pages == 0
    assert stats.mm_stat.compr_data_size == sum(sizes[1:]) + 4096
    rows = stats.classes
    assert sum(r.objs_used for r in rows) == 10
    assert sum(r.pages_used for r in rows) * 4096 == stats.mm_stat.mem_used_total


def test_recompress_huge_pages_with_a_stronger_algorithm() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19))
    pages = [poor_page(i) for i in range(6)] + [text_page(1)]
    handles = pool.store(pages)
    before = pool.mm_stat()
    assert before.huge_pages == 6
    result = pool.recompress("huge")
    assert result["candidates"] == 6 and result["recompressed"] == 6
    after = pool.mm_stat()
    assert after.huge_pages == 0 and after.huge_pages_since == 6
    assert after.compr_data_size == before.compr_data_size - result["bytes_saved"]
    assert pool.load(handles) == pages  # same handles, same bytes
    assert pool.recompress("huge")["candidates"] == 0
    pool.check_invariants()


def test_recompress_keeps_a_page_that_would_not_shrink_a_class() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", recompress_algo="lz4hc"))
    handles = pool.store([random_page(1)])
    assert pool.recompress("huge") == {
        "candidates": 1,
        "recompressed": 0,
        "not_smaller": 1,
        "alloc_failed": 0,
        "bytes_saved": 0,
    }
    assert pool.load(handles) == [random_page(1)]


def test_recompress_idle_pages_only() -> None:
    clock = FakeClock()
    cfg = PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19)
    pool = PagePool("p", cfg, clock=clock)
    pages = [text_page(i) for i in range(8)]
    handles = pool.store(pages)
    clock.now += 100
    pool.load(handles[:3])  # touched: not idle
    clock.now += 30
    result = pool.recompress("idle", idle_seconds=60)
    assert result["candidates"] == 5
    assert result["recompressed"] + result["not_smaller"] == 5
    assert pool.load(handles) == pages
    with pytest.raises(InvalidRequestError):
        pool.recompress("sometimes")
    with pytest.raises(ConfigError):
        PagePool("q").recompress("huge")  # no secondary algorithm configured


def test_threads_compress_and_store_concurrently(process_pages: list[bytes]) -> None:
    pool = PagePool("p", PoolConfig(compressor="zstd"))

    def work(pages: list[bytes]) -> None:
        mine: list[tuple[int, bytes]] = []
        for i in range(0, len(pages), 8):
            batch = pages[i : i + 8]
            mine += zip(pool.store(batch), batch, strict=True)
            if i % 24 == 0 and mine:
                gone = mine[: len(mine) // 3]
                pool.free([h for h, _ in gone])
                mine = mine[len(gone) :]
            if i % 40 == 0:
                pool.compact()
        hs = [h for h, _ in mine]
        assert pool.load(hs) == [p for _, p in mine]

    run_threads(work, [process_pages[i::4] for i in range(4)])
    pool.check_invariants()


def test_registry_names_and_errors() -> None:
    reg = PoolRegistry()
    reg.create("zram0")
    reg.create("zram1", PoolConfig(compressor="lz4", chain_size=4))
    assert reg.names() == ["zram0", "zram1"]
    h = reg.get("zram1").store(text_page(1))
    assert reg.get("zram0").stored_pages == 0 and reg.get("zram1").stored_pages == 1
    with pytest.raises(StaleHandleError):
        reg.get("zram0").load(h)
    with pytest.raises(PoolExistsError):
        reg.create("zram0")
    with pytest.raises(UnknownPoolError):
        reg.get("nope")
    for bad in ("", "../etc", "a/b", ".hidden", "x" * 65, "spa ce"):
        with pytest.raises(ConfigError):
            reg.create(bad)
    reg.remove("zram0")
    with pytest.raises(UnknownPoolError):
        reg.remove("zram0")


@pytest.mark.parametrize(
    "bad",
    [
        {"compressor": "lzo-rle"},
        {"level": 99},
        {"allocator": "slab"},
        {"chain_size": 0},
        {"limit_bytes": -1},
        {"huge_policy": "drop"},
        {"accept_threshold_percent": 101},
        {"recompress_algo": "brotli"},
        {"allocator_options": {"class_step": 12}},
        {"allocator_options": {"nonsense": 1}},
    ],
)
def test_bad_configs_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PoolConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PoolConfig.from_dict({"surprise": 1})


def test_defaults_are_todays_kernels() -> None:
    pool = PagePool("p")
    assert pool.config.compressor == "zstd" and pool._comp.options["level"] == 3
    assert pool.huge_class_size == 3625 and pool._alloc.chain_size == 8


def test_recompress_survives_a_page_freed_while_it_works() -> None:
    cfg = PoolConfig(compressor="lz4", recompress_algo="zstd", recompress_level=19)
    pool = PagePool("p", cfg)
    pages = [poor_page(i) for i in range(4)]
    handles = pool.store(pages)
    index = secondary_index(pool, None, None)
    real = pool._secondaries[index]

    class FreesPageZero:
        name, options = real.name, real.options

        def __init__(self) -> None:
            self.calls = 0

        def compress(self, page: bytes) -> bytes:
            self.calls += 1
            if self.calls == 1:
                pool.free([handles[0]])  # another thread, in effect
            return real.compress(page)

        def decompress(self, data: bytes, size: int) -> bytes:
            return real.decompress(data, size)

    pool._secondaries[index] = FreesPageZero()  # type: ignore[assignment]
    result = pool.recompress("huge")
    assert result["recompressed"] == 3
    pool.check_invariants()
    assert pool.load(handles[1:]) == pages[1:]
    with pytest.raises(StaleHandleError):
        pool.load(handles[:1])


def test_a_batch_that_fails_any_way_is_undone() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4"))
    pool.store([text_page(1)])
    before = pool.mm_stat()
    real_store = pool._alloc.store
    calls = 0

    def flaky(data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected")
        return real_store(data)

    pool._alloc.store = flaky
    with pytest.raises(RuntimeError):
        pool.store([text_page(i) for i in range(2, 8)])
    pool._alloc.store = real_store
    after = pool.mm_stat()
    # Everything undone; only mem_used_max keeps the peak the batch reached (zram's).
    assert dataclasses.replace(after, mem_used_max=before.mem_used_max) == before
    pool.check_invariants()


def test_running_out_of_arena_is_a_clean_limit() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4", limit_bytes=64 * 4096), arena_pages=4)
    with pytest.raises(PoolLimitError):
        pool.store([random_page(i) for i in range(6)])
    assert pool.stored_pages == 0 and pool.mm_stat().mem_used_total == 0
    pool.check_invariants()
    # The address space is the server's to bound, never a client's to choose.
    with pytest.raises(ConfigError):
        PoolConfig(allocator_options={"arena_pages": 4})
    with pytest.raises(ConfigError):
        PoolConfig(limit_bytes=2**70)


def test_a_full_handle_table_is_a_clean_pool_limit() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4"), max_handles=5)
    kept = pool.store([text_page(i) for i in range(3)])
    with pytest.raises(PoolLimitError, match="handle table"):
        pool.store([text_page(i) for i in range(3, 6)])  # 3 more than 5 allows: none stored
    assert pool.stored_pages == 3
    assert pool.load(kept) == [text_page(i) for i in range(3)]
    assert pool.stats().zswap.pool_limit_hit == 1
    pool.check_invariants()
    pool.store([text_page(7), same_page(b"\x00" * 8)])  # exactly full
    pool.free(kept[:1])
    pool.store([text_page(8)])  # a freed slot is issued again


def test_stale_handles_are_counted_per_request() -> None:
    pool = PagePool("p", PoolConfig(compressor="lz4"))
    h1, h2 = pool.store([text_page(1), text_page(2)])
    pool.free([h1])
    for attempt in (lambda: pool.load([h1]), lambda: pool.free([h2, h1]), lambda: pool.load([7])):
        with pytest.raises(StaleHandleError):
            attempt()
    assert pool.counters.stale_handle_requests == 3
    assert pool.load([h2]) == [text_page(2)]  # the batch with a stale handle freed nothing


def _budget_pages(pool: PagePool) -> int:
    """Pages a pool charges the shared budget: its allocator's and its table's."""
    stats = pool.stats()
    return (stats.mm_stat.mem_used_total + stats.metadata.bytes) // 4096


def test_pools_sharing_a_budget_never_pass_it_together() -> None:
    budget = PageBudget(64)
    pools = [
        PagePool(f"p{i}", PoolConfig(compressor="lz4", allocator=a), budget=budget, arena_pages=64)
        for i, a in enumerate(["zsmalloc", "zbud", "z3fold"])
    ]
    stored = [0, 0, 0]
    for i in range(200):
        n = i % 3
        try:
            pools[n].store([random_page(i * 8 + k) for k in range(4)])
            stored[n] += 4
        except MemoryLimitError:
            pass
        assert budget.used == sum(_budget_pages(p) for p in pools) <= 64
    assert budget.used >= 60
    for p, n in zip(pools, stored, strict=True):
        assert p.stored_pages == n  # every refusal stored nothing
        assert p.counters.memory_limit_hit % 4 == 0
        p.check_invariants()
    pools[0].close()  # a pool dropped gives its pages back
    assert budget.used == sum(_budget_pages(p) for p in pools[1:])
    assert pools[1].stats().server.memory_limit == 64 * 4096


def test_a_refused_batch_does_not_move_the_servers_high_water_mark() -> None:
    budget = PageBudget(64)
    pool = PagePool("hw", PoolConfig(compressor="lz4"), budget=budget)
    noise = [random_page(i) for i in range(200)]  # huge pages: a page each
    with pytest.raises(MemoryLimitError):
        pool.store(noise)
    assert pool.stats().server.memory_used_max == 0  # charged, given back: not kept
    pool.store(noise[:10])
    server = pool.stats().server
    assert server.memory_used <= server.memory_used_max
    assert pool.stats().server.memory_used_max == budget.used * 4096 > 0


def test_after_a_refused_batch_the_servers_use_never_passes_its_high_water_mark() -> None:
    """A batch refused at the budget keeps what its entry table grew by: the high-water
    mark counts it (it trailed memory_used by the table's growth)."""
    budget = PageBudget(600)
    pool = PagePool("hw", PoolConfig(compressor="lz4"), budget=budget)
    pages = [text_page(i) for i in range(4000)]
    for start in range(0, len(pages), 512):
        try:
            pool.store(pages[start : start + 512])
        except MemoryLimitError:
            break
    else:
        pytest.fail("the budget never refused a batch")
    server = pool.stats().server
    assert server.memory_used <= server.memory_used_max


@pytest.mark.parametrize("threshold", [None, 50])
def test_a_daemons_full_pool_stores_same_filled_pages(threshold: int | None) -> None:
    """zram stores a same-filled page before it looks at mem_limit (it takes no
    allocator memory), so a daemon's pool at its limit -- and refusing under
    zswap's accept_threshold_percent -- still stores a batch of them, counted
    as same_pages; a batch with one page needing memory is refused whole."""
    daemon = start_daemon()
    try:
        with Client(daemon.url) as c:
            c.create_pool("full", compressor="lz4", limit_bytes=8 * 4096)
            if threshold is not None:
                c.update_pool("full", accept_threshold_percent=threshold)
            stored = 0
            with pytest.raises(PoolLimitError):
                while True:
                    c.store([random_page(stored)], pool="full")
                    stored += 1
            same = [same_page(bytes(8)), same_page(b"\xff" * 8), same_page(b"12345678")]
            handles = c.store(same, pool="full")
            with pytest.raises(PoolLimitError):
                c.store([same_page(bytes(8)), random_page(999)], pool="full")
            stats = c.stats("full")
            assert stats["mm_stat"]["same_pages"] == 3
            assert stats["zswap"]["stored_pages"] == stored + 3
            assert c.load(handles, pool="full") == same
    finally:
        daemon.stop()
