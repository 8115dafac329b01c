"""zswapd: a userspace emulator of Linux compressed swap (zswap / zram).

The service's lock order, the one place it is written: a thread holding one of
these locks may take those below it, never one above.

1. ``DeviceRegistry._lock``: devices made and removed (it makes and removes
   the device's pool under it).
2. ``PoolRegistry._lock``: pools made and removed, names listed (a pool is
   closed under it only when it was just built and is refused).
3. ``Device._lock``: one NBD request's slots at a time (its writes store and
   free pages of its pool while holding it).
4. ``PagePool._wb_lock``: one write-back at a time per pool (zswapd.tier).
5. ``PagePool._lock``: the pool's entries, counters and LRU.
6. The allocator's own lock (``ZsPool`` / ``ZbudPool``), taken inside it.
7. ``PageBudget``'s lock, the server-wide memory budget: held for a few
   instructions, never while calling out.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
