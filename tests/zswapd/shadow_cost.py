"""The shadow's own cost per scanned GiB (hash detection): a measurement, not a test.

Run ``python3 tests/zswapd/shadow_cost.py [MiB]`` (default 1024): it starts a
process holding that much private anonymous memory (every page written), scans
it as ``zswapd shadow`` does, three times, and prints the CPU seconds per GiB
of each scan, the first (every page new), one where every page goes cold (the
COLD events copy the pages out) and a steady one (nothing changes), with the
scanner's state per tracked page.  No daemon: the events are counted, not stored.
"""

from __future__ import annotations

import subprocess
import sys
import time

from zswapd.scanner import Detection, Scanner

TARGET = """
import mmap, sys
n = int(sys.argv[1]) << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, n, 4096):
    m[off : off + 8] = off.to_bytes(8, "little")
print("ready", flush=True)
sys.stdin.read()
"""


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    proc = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(mib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        with Scanner([proc.pid], cold_after=1.0, detection=Detection()) as scanner:
            for label, t in (("first sight", 0.0), ("all go cold", 1.0), ("steady", 1.5)):
                cpu, wall = time.process_time(), time.perf_counter()
                events = sum(1 for _ in scanner.scan(t))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                (scan,) = scanner.scans
                gib = scan.scanned_bytes / (1 << 30)
                print(
                    f"{label:12} {scan.resident_pages} pages, {gib:.2f} GiB read, "
                    f"{events} events: {cpu:.2f} CPU s ({cpu / gib:.2f} per GiB), "
                    f"{wall:.2f} s wall; scan_seconds {scan.scan_seconds:.2f}"
                )
            state = scanner.detection.bytes_per_page * scanner.tracked_pages(proc.pid)
            print(f"state: {state / (1 << 20):.1f} MiB ({scanner.detection.bytes_per_page} B/page)")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
