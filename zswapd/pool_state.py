"""A pool's contents as records, and a pool refilled from them.

What :mod:`zswapd.state` saves to and restores from ``--state-dir``, as zram
keeps nothing across a reboot but a userspace pool can: every live entry
under its handle, with its kind, its length, its age (not its time: this
process's clock means nothing to the next) and its payload (the compressed
object; a same-filled page's word; a written-back page's file slot and tag,
the page itself staying in the backing file), the counters, the high-water
mark, pages_compacted (zram's counts since the device was made) and the
secondary compressors.  A restore refills an empty pool under the old
handles and rebuilds its LRU, oldest first; a record the pool cannot hold
(unknown kind, wrong length, past its limit or the server's) is a
ConfigError.

These are functions of a :class:`~zswapd.pool.PagePool`, split out of it by
concept: they take the pool's lock as its own methods do.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from allocator import InvalidHandleError, PoolFullError
from allocator.handles import SLOT_MASK
from zswapd.backing import unpack
from zswapd.entries import (
    COMPRESSED,
    ENCODING,
    FREED,
    HUGE,
    INCOMPRESSIBLE,
    PAGE_SIZE,
    RECOMPRESSED,
    SAME,
    WRITTEN,
)
from zswapd.errors import ConfigError

if TYPE_CHECKING:
    from zswapd.pool import Counters, PagePool

__all__ = ["restore", "snapshot"]


def snapshot(pool: PagePool) -> dict[str, Any]:
    """Everything needed to rebuild this pool, read under its lock."""
    with pool._lock:
        e = pool._entries
        read = pool._alloc.obj_read
        now = pool._now()
        entries = []
        for slot in e.live_slots():
            kind, obj, clen = e.kind[slot], e.obj[slot], e.clen[slot]
            # A same-filled page's word; a written-back page's file slot | crc.
            if kind == SAME or kind & WRITTEN:
                payload = obj.to_bytes(8, "little")
            else:
                payload = read(obj, clen)
            # The age, not the time: this process's clock means nothing to the next.
            age = max(0, now - e.atime[slot])
            entries.append((e.handle_of(slot), kind, clen, age, payload))
        config = pool.config.to_dict()
        if pool.backing is not None and pool._written:
            # The pages the state file points to are on disk first.
            pool.backing.flush()
        return {
            "config": config,
            "backing_owned": pool.backing_owned,
            "dictionary": pool.config.dictionary.hex() if pool.config.dictionary else None,
            "counters": dataclasses.asdict(pool.counters),
            "mem_used_max": pool._mem_used_max,
            "pages_compacted": pool._alloc.pages_compacted,
            "backing_key": None if pool.backing is None else pool.backing.key.hex(),
            "secondaries": [[c.name, dict(c.options)] for c in pool._secondaries],
            "entries": entries,
        }


def restore(
    pool: PagePool,
    records: list[tuple[int, int, int, int, bytes]],
    counters: Counters,
    used_max: int,
    pages_compacted: int = 0,
) -> None:
    """Fill an empty pool with saved entries, under their old handles.

    Raises:
        ConfigError: a record this pool cannot hold (kind, size, limit).
    """
    with pool._lock:
        if len(pool._entries):
            raise ConfigError("restore() needs an empty pool")
        if len({r[0] for r in records}) != len(records):
            raise ConfigError("a handle appears twice in the saved state")
        # Records carry ages; start this pool's clock far enough back that the
        # oldest page has its age now.
        oldest = max((r[3] for r in records), default=0)
        pool._t0 = pool._clock() - oldest
        rows = []
        try:
            for handle, kind, clen, age, payload in records:
                atime = oldest - age
                if kind == SAME:
                    if len(payload) != 8:
                        raise ConfigError("a same-filled record without its word")
                    rows.append((handle, kind, int.from_bytes(payload, "little"), 0, atime))
                    pool._same_pages += 1
                    continue
                encoding = kind & ENCODING
                if (
                    kind == FREED
                    or (kind & INCOMPRESSIBLE and encoding != HUGE)
                    or (
                        encoding not in (COMPRESSED, HUGE)
                        and not RECOMPRESSED <= encoding < RECOMPRESSED + len(pool._secondaries)
                    )
                ):
                    raise ConfigError(f"a record of unknown kind {kind}")
                if not 0 < clen <= PAGE_SIZE or (encoding == HUGE) != (clen == PAGE_SIZE):
                    raise ConfigError("a record whose length does not match its kind")
                if kind & WRITTEN:
                    if pool.backing is None or len(payload) != 8:
                        raise ConfigError(
                            "a written-back record, and no backing file to find it in"
                        )
                    obj = int.from_bytes(payload, "little")
                    pool.backing.take(unpack(obj)[0])
                    rows.append((handle, kind, obj, clen, atime))
                    pool._written += 1
                    continue
                if len(payload) != clen:
                    raise ConfigError("a record whose length does not match its kind")
                rows.append((handle, kind, pool._alloc.store(payload), clen, atime))
                pool._compr_data_size += clen
                pool._huge_pages += encoding == HUGE
            pool._entries.adopt(rows)
            # The LRU again, oldest first (its order within a second is lost).
            listed = sorted(
                (r for r in rows if r[1] != SAME and not r[1] & WRITTEN), key=lambda r: r[4]
            )
            for r in listed:
                pool._entries.lru_push(r[0] & SLOT_MASK)
        except PoolFullError as exc:
            raise ConfigError(
                "the saved pages do not fit the pool's limit or the server's "
                f"--memory-limit (raise it, or move the state file aside): {exc}"
            ) from exc
        except InvalidHandleError as exc:
            raise ConfigError(f"bad handle in saved state: {exc}") from exc
        pool.counters = counters
        pool._mem_used_max = max(used_max, pool._alloc.total_size_bytes)
        # zram's pages_compacted counts since the device was made, not since
        # this process started.
        if type(pages_compacted) is not int or pages_compacted < 0:
            raise ConfigError("pages_compacted that is not a count")
        pool._alloc.pages_compacted += pages_compacted
        if pool.budget is not None:
            pool.budget.commit_max()
