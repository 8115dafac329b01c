"""A process for the shadow's tests to watch: regions of known pages, driven from stdin.

Run as ``python3 shadow_target.py [--pages N] [--reserve GIB]``.  It maps three
private anonymous regions of N pages each and writes every page once with distinct,
compressible text:

- ``cold``: never written again;
- ``hot``: idle until the command ``hot``, then rewritten every 50 ms (every
  page, new bytes each time), so a test can let it go cold first and then make
  its refaults certain rather than a matter of timing;
- ``gone``: unmapped at the command ``unmap``.

With ``--reserve`` it also reserves GIB GiB (MAP_NORESERVE) and touches three
of its pages.  It prints one JSON line, ``{"cold": ADDRESS, "hot": ...,
"gone": ..., "pages": N}`` (and ``"reserved": [the three addresses]``), then
answers each command on stdin with ``ok COMMAND`` once done: ``hot`` (after
its first rewrite), ``unmap``, ``fork`` (``ok fork CHILD_PID``: a child that
rewrites its copy of the cold region, then sleeps: it must change nothing of
the parent's), ``churn`` (a thread maps, writes and unmaps 64 pages, over and
over), ``exec`` (answers, then execs a sleeping interpreter), ``exit`` (exits
0 right after answering).  End of stdin: exit.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import threading
import time

PAGE = 4096
# Python 3.12 names it; Linux's value on every architecture zswapd runs on.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def region(pages: int, tag: str) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(pages):
        m[i * PAGE : (i + 1) * PAGE] = text(tag, i, 0)
    view = (ctypes.c_char * len(m)).from_buffer(m)
    address = ctypes.addressof(view)
    del view  # an export would keep the region from being unmapped
    return m, address


def text(tag: str, i: int, n: int) -> bytes:
    """A page of text, distinct per region, page and generation, that compresses well."""
    line = f"{tag} page {i} generation {n}: the quick brown fox jumps over the lazy dog\n"
    return (line * (PAGE // len(line) + 1)).encode()[:PAGE]


def rewrite(m: mmap.mmap, pages: int, started: threading.Event) -> None:
    n = 0
    while True:
        n += 1
        for i in range(pages):
            m[i * PAGE : (i + 1) * PAGE] = text("hot", i, n)
        started.set()
        time.sleep(0.05)


def churn() -> None:
    """Map, write and unmap a region, again and again: mappings that vanish
    between a scan's walk and its read."""
    n = 0
    while True:
        n += 1
        m, _ = region(64, f"churn {n}")
        m.close()


def reserve(gib: int) -> tuple[mmap.mmap, int, list[int]]:
    """A reservation of ``gib`` GiB (MAP_NORESERVE), three pages of it touched."""
    size = gib << 30
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    m = mmap.mmap(-1, size, flags=flags)
    touched = [0, size // 2, size - PAGE]
    for off in touched:
        m[off : off + PAGE] = text("reserved", off // PAGE, 0)
    view = (ctypes.c_char * size).from_buffer(m)
    address = ctypes.addressof(view)
    del view
    return m, address, touched


def main() -> None:
    pages = int(sys.argv[sys.argv.index("--pages") + 1]) if "--pages" in sys.argv else 16
    cold, cold_at = region(pages, "cold")
    hot, hot_at = region(pages, "hot")
    gone, gone_at = region(pages, "gone")
    info: dict[str, object] = {"cold": cold_at, "hot": hot_at, "gone": gone_at, "pages": pages}
    if "--reserve" in sys.argv:
        reservation = reserve(int(sys.argv[sys.argv.index("--reserve") + 1]))  # kept mapped
        info["reserved"] = [reservation[1] + off for off in reservation[2]]
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "hot":
            started = threading.Event()
            threading.Thread(target=rewrite, args=(hot, pages, started), daemon=True).start()
            started.wait()
        elif command == "unmap":
            gone.close()
        elif command == "fork":
            child = os.fork()
            if child == 0:
                for i in range(pages):
                    cold[i * PAGE : (i + 1) * PAGE] = text("child", i, 0)
                time.sleep(3600)
                os._exit(0)
            command = f"fork {child}"
        elif command == "churn":
            threading.Thread(target=churn, daemon=True).start()
        elif command == "exec":
            print("ok exec", flush=True)
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)"])
        elif command == "exit":
            print("ok exit", flush=True)
            os._exit(0)
        print(f"ok {command}", flush=True)


if __name__ == "__main__":
    main()
