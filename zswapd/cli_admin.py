"""The administrative commands: stats, pools, devices, compact.

What ``zramctl`` is to zram: a summary row per pool and per device in human
units, the kernel's figures behind it on request (``--json``: as the API gives
them; ``--classes``: the debugfs class table).  The figures are zram's own:
DATA is ``orig_data_size``, COMPR ``compr_data_size``, TOTAL ``mem_used_total``;
RATIO is DATA/TOTAL and SAVED is DATA - TOTAL, what the pool spares the memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from zswapd.cli_client import open_client, pool_flags
from zswapd.cli_format import (
    algorithm,
    count,
    format_classes,
    human,
    limit,
    pool_row,
    printable,
    printable_lines,
    table,
)
from zswapd.client import Client
from zswapd.errors import ConfigError, UnknownPoolError

__all__ = [
    "POOL_COLUMNS",
    "STATS_COLUMNS",
    "cmd_compact",
    "cmd_devices_create",
    "cmd_devices_list",
    "cmd_devices_remove",
    "cmd_devices_stats",
    "cmd_pools_create",
    "cmd_pools_list",
    "cmd_pools_remove",
    "cmd_pools_set",
    "cmd_stats",
]

STATS_COLUMNS = (
    "NAME",
    "ALGORITHM",
    "DISKSIZE",
    "MEM-LIMIT",
    "DATA",
    "COMPR",
    "TOTAL",
    "ZERO-PAGES",
    "HUGE",
    "RATIO",
    "SAVED",
)
POOL_COLUMNS = (
    "NAME",
    "ALGORITHM",
    "ALLOCATOR",
    "CHAIN",
    "MEM-LIMIT",
    "HUGE",
    "WRITEBACK",
    "PAGES",
    "TOTAL",
)
DEVICE_COLUMNS = STATS_COLUMNS


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)  # ensure_ascii: control characters come escaped
    print()


def _say(text: str) -> None:
    """Print what holds a server's strings: a fake or hostile server cannot drive
    the terminal of whoever reads it (escape sequences come out as text)."""
    print(printable_lines(text))


def _pool_line(verb: str, what: str, name: str, cfg: dict[str, Any], extra: str = "") -> str:
    """``created pool NAME: zstd:3, zsmalloc, limit none``: what a pool is made of."""
    return (
        f"{verb} {what} {name}: {extra}{algorithm(cfg)}, {cfg.get('allocator')}, limit {limit(cfg)}"
    )


def _gather(client: Client) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every pool's stats and every device's, by name (pools exclude the devices' own).

    A pool or device removed between the listing and its stats is left out,
    as ``zramctl`` leaves out a device reset while it reads.
    """
    devices: dict[str, dict[str, Any]] = {}
    for name in client.devices():
        try:
            devices[name] = {**client.device_stats(name), "config": client.stats(name)["config"]}
        except UnknownPoolError:
            continue
    pools: dict[str, dict[str, Any]] = {}
    for name in client.pools():
        if name in devices:
            continue
        try:
            pools[name] = client.stats(name)
        except UnknownPoolError:
            continue
    return pools, devices


def _details(stats: dict[str, Any]) -> list[str]:
    """A pool's figures under the kernel's names, one family a line."""
    mm = stats["mm_stat"]
    cfg = stats["config"]
    lines = []
    if "huge_class_size" in stats:
        lines.append(
            f"pool {stats['pool']}: {algorithm(cfg)}, {cfg['allocator']} chain "
            f"{cfg['chain_size']}, huge from {stats['huge_class_size']} bytes"
        )
    comp = stats.get("compressor")
    if comp is not None:
        # Which kernel's figures these are (or why they are not any kernel's).
        lines.append(f"compressor {comp['name']}: {comp['version']}; {comp['fidelity']}")
    lines.append("mm_stat: " + " ".join(f"{k}={v}" for k, v in mm.items()))
    if "io_stat" in stats:
        lines.append("io_stat: " + " ".join(f"{k}={v}" for k, v in stats["io_stat"].items()))
    lines.append("zswap: " + " ".join(f"{k}={v}" for k, v in stats["zswap"].items()))
    backing = stats.get("backing")
    if backing is not None:
        lines.append("bd_stat: " + " ".join(f"{k}={v}" for k, v in stats["bd_stat"].items()))
        wb_limit = backing["writeback_limit"]
        lines.append(
            f"backing {printable(backing['file'])}: {backing['used_slots']} of "
            f"{backing['slots']} slots used, writeback {backing['writeback']}"
            f"{'' if wb_limit is None else f', writeback_limit {wb_limit}'}"
            f"{', REMOVED' if backing['removed'] else ''}"
            f", {backing['io_errors']} I/O errors, {backing['corrupt_pages']} corrupt"
        )
    return lines


def _fidelity(every: dict[str, dict[str, Any]]) -> str:
    """Which pools' figures are a real kernel's: one line per verdict, naming
    the pools and devices it holds for (``default, zram0: exact for Linux 6.12``)."""
    names: dict[str, list[str]] = {}
    for name, stats in every.items():
        comp = stats.get("compressor")
        if isinstance(comp, dict) and isinstance(comp.get("fidelity"), str):
            names.setdefault(comp["fidelity"], []).append(name)
    return "\n".join(f"{', '.join(n)}: {verdict}" for verdict, n in names.items())


def _classes(args: argparse.Namespace, stats: dict[str, Any]) -> list[str]:
    """The debugfs class table when asked for (``--all``: empty classes too)."""
    if not (args.classes or args.all):
        return []
    rows = stats["classes"] if args.all else [r for r in stats["classes"] if r["obj_allocated"]]
    return ["", format_classes(rows)]


def cmd_stats(args: argparse.Namespace) -> int:
    """``zswapd stats``: every pool and device, one row each; ``--pool``: one, in full."""
    with open_client(args) as client:
        # The wire protocol cannot list pools: without --pool it shows the default.
        name = args.pool or ("default" if client.over_wire else None)
        if args.pool is None and client.over_wire:
            print(
                "note: wire protocol: the default pool only; use the HTTP API for every "
                "pool and device",
                file=sys.stderr,
            )
        if name is None:
            pools, devices = _gather(client)
        else:
            stats = client.stats(name)
    if name is None:
        if args.json:
            _print_json({"pools": pools, "devices": devices})
            return 0
        rows = [pool_row(n, s) for n, s in pools.items()]
        rows += [pool_row(n, s, disksize=s["size"]) for n, s in devices.items()]
        print(table(STATS_COLUMNS, rows))
        fidelity = _fidelity({**pools, **devices})
        if fidelity:
            _say("\n" + fidelity)
        for n, s in [*pools.items(), *devices.items()]:
            if args.classes or args.all:
                _say("\n".join(["", f"{n}:", *_classes(args, s)[1:]]))
        return 0
    if args.json:
        _print_json(stats)
        return 0
    print(table(STATS_COLUMNS, [pool_row(name, stats)]))
    _say("\n".join(["", *_details(stats), *_classes(args, stats)]))
    return 0


def cmd_pools_list(args: argparse.Namespace) -> int:
    """``zswapd pools list``: each pool's settings and size (``--json``: its config and mm_stat)."""
    with open_client(args) as client:
        found: dict[str, dict[str, Any]] = {}
        for name in client.pools():
            try:
                found[name] = client.stats(name)
            except UnknownPoolError:  # removed while listing
                continue
    if args.json:
        _print_json({n: {"config": s["config"], "mm_stat": s["mm_stat"]} for n, s in found.items()})
        return 0
    rows = []
    for name, stats in found.items():
        cfg, mm = stats["config"], stats["mm_stat"]
        rows.append(
            {
                "NAME": name,
                "ALGORITHM": algorithm(cfg),
                "ALLOCATOR": cfg["allocator"],
                "CHAIN": str(cfg["chain_size"]),
                "MEM-LIMIT": limit(cfg),
                "HUGE": cfg["huge_policy"],
                "WRITEBACK": cfg["writeback"] if cfg["backing_file"] else "-",
                "PAGES": str(mm["orig_data_size"] // 4096),
                "TOTAL": human(mm["mem_used_total"]),
            }
        )
    print(table(POOL_COLUMNS, rows, words={"NAME", "ALGORITHM", "ALLOCATOR", "HUGE", "WRITEBACK"}))
    return 0


def _creation_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in pool_flags(args).items() if v is not None}


def cmd_pools_create(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        result = client.create_pool(args.name, **_creation_config(args))
    if args.json:
        _print_json(result)
    else:
        _say(_pool_line("created", "pool", result["pool"], result["config"]))
    return 0


def cmd_pools_set(args: argparse.Namespace) -> int:
    from zswapd.settings import POOL_OPTIONS

    live = [option for option in POOL_OPTIONS if option.live]
    changes: dict[str, Any] = {
        option.key: getattr(args, option.dest)
        for option in live
        if getattr(args, option.dest) is not None
    }
    if args.no_writeback_limit:
        changes["writeback_limit"] = None
    if not changes:
        flags = [option.flag for option in live]
        raise ConfigError(f"give {', '.join(flags)} or --no-writeback-limit")
    with open_client(args) as client:
        result = client.update_pool(args.name, **changes)
    if args.json:
        _print_json(result)
        return 0
    cfg = result["config"]
    wb_limit = cfg.get("writeback_limit")
    threshold = cfg.get("accept_threshold_percent")
    _say(
        _pool_line("changed", "pool", result["pool"], cfg)
        + f", huge {cfg.get('huge_policy')}"
        + ("" if threshold is None else f", accept threshold {threshold}%")
        + ("" if wb_limit is None else f", writeback_limit {wb_limit}")
    )
    return 0


def _remove(args: argparse.Namespace, kind: str, remove: Callable[[Client, str], None]) -> int:
    """Remove the pool or device named ``args.name`` (every page in it) and say so."""
    with open_client(args) as client:
        remove(client, args.name)
    print(f"removed {kind} {args.name!r}")
    return 0


def cmd_pools_remove(args: argparse.Namespace) -> int:
    return _remove(args, "pool", Client.remove_pool)


def cmd_devices_list(args: argparse.Namespace) -> int:
    """``zswapd devices list``: zramctl's table (``--json``: each device's stats)."""
    with open_client(args) as client:
        _, devices = _gather(client)
    if args.json:
        _print_json(devices)
        return 0
    rows = []
    for name, stats in devices.items():
        rows.append(pool_row(name, stats, disksize=stats["size"]))
    print(table(DEVICE_COLUMNS, rows))
    return 0


def cmd_devices_create(args: argparse.Namespace) -> int:
    from zswapd.settings import parse_size

    size = parse_size(args.size)
    with open_client(args) as client:
        result = client.create_device(args.name, size, **_creation_config(args))
    if args.json:
        _print_json(result)
        return 0
    name = result["device"]
    _say(
        _pool_line("created", "device", name, result["config"], f"{human(result['size'])}, ")
        + f" (NBD export {name!r})"
    )
    return 0


def cmd_devices_remove(args: argparse.Namespace) -> int:
    return _remove(args, "device", Client.remove_device)


def cmd_devices_stats(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        stats = client.device_stats(args.name)
        config = client.stats(args.name)["config"]
    if args.json:
        _print_json(stats)
        return 0
    stats = {**stats, "config": config}
    print(table(STATS_COLUMNS, [pool_row(args.name, stats, disksize=stats["size"])]))
    _say("\n".join(["", *_details(stats), *_classes(args, stats)]))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """zram's ``compact``: move objects out of sparse zspages, release the emptied pages."""
    with open_client(args) as client:
        released = client.compact(args.pool)
    _say(f"pool {args.pool}: {count(released, 'page')} released ({human(released * 4096)})")
    return 0
