"""The ``zswapd`` command line."""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import compressors
from zswapd import __version__
from zswapd.bench.cli import add_bench
from zswapd.cli_admin import (
    cmd_compact,
    cmd_devices_create,
    cmd_devices_list,
    cmd_devices_remove,
    cmd_devices_stats,
    cmd_pools_create,
    cmd_pools_list,
    cmd_pools_remove,
    cmd_pools_set,
    cmd_stats,
)
from zswapd.cli_client import (
    cmd_fetch,
    cmd_free,
    cmd_push,
    cmd_recompress,
    cmd_writeback,
    idle_seconds_problem,
    pool_flags,
)
from zswapd.cli_format import positive_int, printable
from zswapd.client import DEFAULT_SOCKET
from zswapd.errors import ZswapdError
from zswapd.protocol import ProtocolError
from zswapd.settings import (
    DEFAULT_HTTP,
    POOL_OPTIONS,
    SERVER_OPTIONS,
    default_text,
    parse_compressor,
)

__all__ = ["main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from zswapd.server import serve
    from zswapd.settings import load_settings

    try:
        flags = {
            **{option.key: getattr(args, option.key) for option in SERVER_OPTIONS},
            "devices": args.device,
            **pool_flags(args),
        }
        settings = load_settings(args.config, os.environ, flags)
        return serve(settings)
    except ZswapdError as exc:
        print(f"zswapd serve: {exc}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (as every other failure) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zswapd", description="A userspace emulator of Linux compressed swap (zram/zswap)."
    )
    parser.add_argument("--version", action="version", version=f"zswapd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_page_commands(sub)
    common = _client_options(moving=False)
    _add_stats(sub, common)
    _add_pools(sub, common)
    _add_devices(sub, common)
    _add_maintenance(sub, common)
    add_bench(sub)
    _add_estimate_parser(sub)
    _add_replay_parser(sub)
    _add_shadow_parser(sub, _client_options(moving=False))
    return parser


# What ``add_subparsers`` returns: private and generic in typeshed, whose add_parser
# would then refuse plain ArgumentParser parents; Any keeps the builders simple.
_Sub = Any

POOL_HELP = "pool to act on (default: default)"
HANDLES_POOL_HELP = "pool to act on (default: the one the handles file names, else default)"


def _add_serve(sub: _Sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="start the daemon",
        description="Serve the HTTP API with one pool named 'default'. Precedence: flags, "
        "then ZSWAPD_* environment variables, then --config FILE (TOML), then defaults. "
        "Once up, it prints each pool and device and every address it serves.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML settings file")
    serve.add_argument(
        "--device",
        action="append",
        metavar="NAME=SIZE[,opt=val...]",
        help="a block device (repeatable), e.g. zram0=1G,compressor=lz4",
    )
    # Every server setting from its one description (zswapd.settings.SERVER_OPTIONS).
    for option in SERVER_OPTIONS:
        serve.add_argument(
            option.flag,
            dest=option.key,
            type=option.parse,
            metavar=option.metavar,
            help=f"{option.help} ({default_text(option)}; ${option.env})".replace("%", "%%"),
        )
    _add_pool_flags(serve, "the default pool's")
    serve.set_defaults(func=_cmd_serve)


def _client_options(*, moving: bool) -> argparse.ArgumentParser:
    """The options of every command that talks to a daemon.

    Args:
        moving: for push, fetch, free: their batch size and progress bar too.
            The others accept ``--batch-pages`` and ``--quiet`` unlisted and
            ignore them, so scripts that always pass them keep working.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help="daemon: http://HOST:PORT or http+unix:PATH (HTTP), unix:PATH (wire protocol); "
        f"default $ZSWAPD_URL, else http+unix://{DEFAULT_SOCKET} (the systemd unit's) if "
        f"that socket exists, else http://{DEFAULT_HTTP}",
    )
    common.add_argument("--token-file", help="bearer token file ($ZSWAPD_TOKEN_FILE)")
    common.add_argument(
        "--batch-pages",
        type=int,
        help="pages per request (default: the server's cap)" if moving else argparse.SUPPRESS,
    )
    if moving:  # -q as estimate has it; the others keep their -q free
        common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    else:
        common.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    return common


def _add_page_commands(sub: _Sub) -> None:
    """push, fetch, free: the commands that move pages, in batches, with a progress bar."""
    parents = [_client_options(moving=True)]

    push = sub.add_parser(
        "push", parents=parents, help="store page files or a live process's memory"
    )
    push.add_argument("files", nargs="*", metavar="FILE", help="page-aligned files")
    push.add_argument("--pid", type=int, help="push the pages swap would see in this process")
    push.add_argument("--pool", default="default", help=POOL_HELP)
    push.add_argument("-o", "--out", help="handles file (default: zswapd-POOL.handles)")
    push.add_argument(
        "--force", action="store_true", help="replace an existing handles file (default: refuse)"
    )
    push.set_defaults(func=cmd_push)

    fetch = sub.add_parser("fetch", parents=parents, help="restore pages from a handles file")
    fetch.add_argument("handles", metavar="HANDLES", help="handles file from push ('-': stdin)")
    fetch.add_argument(
        "-o", "--output", required=True, help="file to write the pages to ('-': stdout)"
    )
    fetch.add_argument("--pool", help=HANDLES_POOL_HELP)
    fetch.set_defaults(func=cmd_fetch)

    free = sub.add_parser("free", parents=parents, help="free the pages of a handles file")
    free.add_argument("handles", metavar="HANDLES", help="handles file from push ('-': stdin)")
    free.add_argument("--pool", help=HANDLES_POOL_HELP)
    free.add_argument(
        "--keep",
        action="store_true",
        help="keep HANDLES (default: removed once every page in it is freed)",
    )
    free.set_defaults(func=cmd_free)


def _add_stats(sub: _Sub, common: argparse.ArgumentParser) -> None:
    stats = sub.add_parser(
        "stats",
        parents=[common],
        help="zramctl-like figures of every pool and device, or of one pool",
        description="Without --pool: one row per pool and per device (DATA orig_data_size, "
        "COMPR compr_data_size, TOTAL mem_used_total, RATIO DATA/TOTAL, SAVED DATA-TOTAL). "
        "With --pool: that pool's row and its kernel figures (mm_stat, zswap, bd_stat).",
    )
    stats.add_argument(
        "--pool", help="pool to act on (default: every pool and device, one row each)"
    )
    stats.add_argument("--classes", action="store_true", help="the debugfs class table too")
    stats.add_argument(
        "--all", action="store_true", help="every class, empty ones too (implies --classes)"
    )
    stats.add_argument("--json", action="store_true", help="print the JSON as the API gives it")
    stats.set_defaults(func=cmd_stats)


def _action(
    actions: _Sub,
    common: argparse.ArgumentParser,
    action: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    *,
    target: str | None = None,
    json: str | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """One ACTION of ``pools`` or ``devices``, with the client's flags; ``target``:
    the help of its NAME argument, ``json``: that of its ``--json`` flag."""
    p: argparse.ArgumentParser = actions.add_parser(
        action, parents=[common], help=help, description=description
    )
    if target is not None:
        p.add_argument("name", metavar="NAME", help=target)
    if json is not None:
        p.add_argument("--json", action="store_true", help=json)
    p.set_defaults(func=func)
    return p


_NEW_NAME = "1-64 of A-Z a-z 0-9 _ . -"


def _add_pools(sub: _Sub, common: argparse.ArgumentParser) -> None:
    pools = sub.add_parser("pools", help="list, create, change (set) or remove pools")
    action = functools.partial(
        _action, pools.add_subparsers(dest="action", required=True, metavar="ACTION"), common
    )
    action(
        "list",
        cmd_pools_list,
        "each pool's settings and size, one row each",
        json="each pool's config and mm_stat",
    )
    create = action(
        "create",
        cmd_pools_create,
        "a new pool",
        target=_NEW_NAME,
        json="print the JSON answer",
        description="Create a pool; what is not given takes the kernel's default.",
    )
    _add_pool_flags(create, "its")
    change = action(
        "set",
        cmd_pools_set,
        "change what a pool takes live",
        target="the pool",
        json="print the JSON answer",
        description="Change the settings a pool takes while it holds pages (as zram's sysfs "
        "files); the others are fixed when it is created.",
    )
    _add_live_flags(change)
    action("remove", cmd_pools_remove, "remove a pool and every page in it", target="the pool")


def _add_devices(sub: _Sub, common: argparse.ArgumentParser) -> None:
    devices = sub.add_parser(
        "devices", help="list, create or remove block devices (NBD exports), or their stats"
    )
    action = functools.partial(
        _action, devices.add_subparsers(dest="action", required=True, metavar="ACTION"), common
    )
    action("list", cmd_devices_list, "zramctl's table of devices", json="each device's stats")
    create = action(
        "create",
        cmd_devices_create,
        "a new device (its NBD export has its name)",
        target=_NEW_NAME,
        json="print the JSON answer",
        description="Create a device of SIZE bytes in 4 KiB slots over a pool of its own "
        "(zramctl --size); it starts empty and is served by the daemon's --nbd listener.",
    )
    create.add_argument(
        "--size", required=True, metavar="SIZE", help="disk size, e.g. 64M (whole 4 KiB slots)"
    )
    _add_pool_flags(create, "its")
    action(
        "remove",
        cmd_devices_remove,
        "remove a device and everything on it",
        target="the device",
    )
    stats = action(
        "stats",
        cmd_devices_stats,
        "a device's figures (mm_stat, io_stat, bd_stat)",
        target="the device",
        json="print the JSON as the API gives it",
    )
    stats.add_argument("--classes", action="store_true", help="the debugfs class table too")
    stats.add_argument(
        "--all", action="store_true", help="every class, empty ones too (implies --classes)"
    )


def _add_maintenance(sub: _Sub, common: argparse.ArgumentParser) -> None:
    """compact, writeback, recompress: zram's maintenance, asked of a pool."""
    compact = sub.add_parser(
        "compact",
        parents=[common],
        help="release the pages of a pool's sparse zspages (zram's compact)",
    )
    compact.add_argument("--pool", default="default", help=POOL_HELP)
    compact.set_defaults(func=cmd_compact)

    writeback = sub.add_parser(
        "writeback", parents=[common], help="write pages back to a pool's backing file"
    )
    writeback.add_argument("--pool", default="default", help=POOL_HELP)
    writeback.add_argument(
        "--type",
        required=True,
        choices=["idle", "huge", "huge_idle", "incompressible", "lru"],
        help="which pages (zram's writeback types; lru: the least recently used)",
    )
    writeback.add_argument(
        "--idle-seconds",
        type=float,
        metavar="N",
        help="idle, huge_idle (required): not stored or loaded for N seconds (0: all)",
    )
    writeback.add_argument("--max-pages", type=int, help="write at most this many")
    writeback.add_argument(
        "--json", action="store_true", help="print the JSON answer (exit 1 if it stopped early)"
    )
    writeback.set_defaults(func=cmd_writeback)

    recompress = sub.add_parser(
        "recompress",
        parents=[common],
        help="recompress a pool's huge or idle pages with a secondary algorithm",
    )
    recompress.add_argument("--pool", default="default", help=POOL_HELP)
    recompress.add_argument(
        "--type", required=True, choices=["huge", "idle", "huge_idle"], help="which pages (zram's)"
    )
    recompress.add_argument(
        "--algo",
        choices=compressors.available(),
        help="secondary algorithm (default: the pool's recompress_algo)",
    )
    recompress.add_argument("--level", type=int, help="its level")
    recompress.add_argument(
        "--idle-seconds",
        type=float,
        metavar="N",
        help="idle, huge_idle (required): not stored or loaded for N seconds (0: all)",
    )
    recompress.add_argument(
        "--threshold",
        type=int,
        metavar="BYTES",
        help="zram's: skip objects smaller than this, keep only results smaller than it "
        "(below huge_class_size)",
    )
    recompress.add_argument("--json", action="store_true", help="print the JSON answer")
    recompress.set_defaults(func=cmd_recompress)


def _add_estimate_parser(sub: Any) -> None:
    """``zswapd estimate``: zram's figures per compressor, without a daemon."""
    from zswapd.estimate import FULL_RUN_MAX_HELD, FULL_RUN_MAX_PAGES
    from zswapd.estimate_cli import cmd_estimate

    p = sub.add_parser(
        "estimate",
        help="what zram would save on a process or page files, per compressor (no daemon)",
        description="Store the pages swap would see of processes (or page files) in one "
        "zsmalloc pool per compressor and level (the kernel's defaults) and print what "
        "zram would report: DATA, COMPR, TOTAL, ratio, saved, same-filled and huge pages, "
        "compress and decompress cost per page on this machine, and a recommendation. "
        "Without --sample every page goes through every pool, so memory grows to about "
        f"the sum of their TOTALs; more than {FULL_RUN_MAX_PAGES} pages "
        f"({FULL_RUN_MAX_PAGES >> 8} MiB), or pools holding more than "
        f"{FULL_RUN_MAX_HELD >> 20} MiB together, need --sample.",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="page files (whole 4096-byte pages)")
    p.add_argument("--pid", type=int, action="append", metavar="PID", help="a process (repeatable)")
    p.add_argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help="hold and measure a uniform random sample of N pages (at most "
        f"{FULL_RUN_MAX_PAGES}), scale, and give a 95%% bound",
    )
    p.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    p.add_argument(
        "--compressor",
        action="append",
        metavar="NAME[:LEVEL]",
        help="try only these (repeatable), e.g. lz4, zstd:-1 (default: lz4, lz4hc:9, "
        "zstd:-1, zstd:1, zstd:3, zstd:9, deflate, lzo)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_estimate)


def _add_replay_parser(sub: _Sub) -> None:
    """``zswapd replay``: a recorded timeline played into a pool of any settings (no daemon)."""
    from allocator import ALLOCATORS
    from zswapd.config import HUGE_POLICIES, WRITEBACK_MODES
    from zswapd.replay import SPEEDS, cmd_replay, parse_percent
    from zswapd.settings import parse_size

    p = sub.add_parser(
        "replay",
        help="play a recorded shadow timeline into a pool of any settings (no daemon)",
        description="Check FILE (written by zswapd shadow --record) whole, then play its "
        "ticks into a pool in this process made with the recorded pool's settings, each "
        "flag given overriding one, and print the shadow's figures. The same file under "
        "the same settings gives the same figures, exactly.",
    )
    p.add_argument("file", metavar="FILE", help="a record file")
    p.add_argument(
        "--compressor",
        type=_argtype(compressor_and_level),
        metavar="NAME[:LEVEL]",
        help="algorithm and level (no level: the algorithm's default), e.g. lz4, zstd:9; "
        f"a level only for {', '.join(_levelled())} (default: as recorded)",
    )
    p.add_argument("--allocator", choices=tuple(ALLOCATORS), help="(default: as recorded)")
    p.add_argument(
        "--chain-size",
        type=positive_int,
        metavar="N",
        help="zsmalloc's longest zspage (as recorded)",
    )
    p.add_argument(
        "--limit",
        type=_argtype(parse_size),
        metavar="SIZE",
        help="pool memory limit; 0: none (default: as recorded)",
    )
    p.add_argument(
        "--writeback",
        choices=WRITEBACK_MODES,
        help="lru: write the least recently used pages to a temporary backing file at the "
        "limit instead of refusing; manual: none (default: as recorded)",
    )
    p.add_argument(
        "--backing-size",
        type=_argtype(parse_size),
        metavar="SIZE",
        help="the lru backing file's size (default: as recorded, else a slot per cold page "
        "in the record; sparse)",
    )
    p.add_argument(
        "--huge-policy", choices=HUGE_POLICIES, help="store (zram) or reject (as recorded)"
    )
    p.add_argument(
        "--accept-threshold-percent",
        type=_argtype(parse_percent),
        metavar="N",
        help="zswap's hysteresis, 0..100, under a limit: once the pool hits it, refuse stores "
        "until it is below N%% of it (manual); with lru, write back down to N%% (default 90) "
        "(default: as recorded)",
    )
    p.add_argument(
        "--speed",
        choices=SPEEDS,
        default="max",
        help="max: as fast as it goes (default); recorded: each tick at its recorded time",
    )
    p.add_argument("--timeline", action="store_true", help="print the figures after every tick")
    p.add_argument(
        "--json", action="store_true", help="JSON: a line per tick (--timeline), then the end"
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="play the whole ticks of a record cut short (no end frame: its shadow killed)",
    )
    p.set_defaults(func=cmd_replay)


def _add_shadow_parser(sub: _Sub, common: argparse.ArgumentParser) -> None:
    """``zswapd shadow``: what zswap would do for live processes, interval by interval."""
    from zswapd.cli_format import parse_duration
    from zswapd.shadow_cli import cmd_shadow

    def duration(text: str) -> float:
        return parse_duration(text)

    def duration_or_zero(text: str) -> float:
        return parse_duration(text, zero=True)

    def interval(text: str) -> float:
        # The daemon refuses a report of a shorter one (zswapd.shadows).
        from zswapd.shadows import MIN_INTERVAL_SECONDS

        seconds = parse_duration(text)
        if seconds < MIN_INTERVAL_SECONDS:
            raise argparse.ArgumentTypeError(
                f"interval {text.strip()[:40]!r} out of range: at least "
                f"{MIN_INTERVAL_SECONDS * 1000:g}ms"
            )
        return seconds

    duration.__name__ = duration_or_zero.__name__ = interval.__name__ = "duration"
    p = sub.add_parser(
        "shadow",
        parents=[common],
        help="keep a pool equal to what swap would hold for live processes, over time",
        description="Scan the processes every interval (never stopping them) and keep a pool "
        "of the daemon equal to what zswap would hold: a page unchanged for --cold-after is "
        "stored, a stored page that changes is loaded and freed (a refault), a page that goes "
        "away is freed. Prints each process's resident, cold and stored pages, memory saved, "
        "refaults per second and the scan's own cost every interval, reports them to the "
        "daemon (GET /v1/shadows, the metrics), and a summary at the end (SIGINT, SIGTERM, "
        "--duration, or every process gone). Saved is what compression saves in RAM (pages "
        "written back to disk are shown apart); a process's share is the pool's saving split "
        "by the pages each process stored. Without the idle-page bitmap, refaults count "
        "writes only. A report the daemon refuses is said once and the shadow goes on. "
        "Durations: 500ms, 10s, 2m, 1h or seconds.",
    )
    for action in p._actions:  # the common --quiet is hidden elsewhere; here it means something
        if action.dest == "quiet":
            action.help = "no tick lines (the first line and the summary only)"
    p.add_argument(
        "--pid",
        type=int,
        action="append",
        required=True,
        metavar="PID",
        help="a process (repeatable; its forks are not followed)",
    )
    p.add_argument(
        "--interval", type=interval, default=10.0, help="between scans (default 10s, at least 1ms)"
    )
    p.add_argument(
        "--cold-after",
        type=duration_or_zero,
        default=120.0,
        help="unchanged this long, a page is swapped out (default 120s)",
    )
    p.add_argument(
        "--pool",
        help="the pool to drive (default shadow-PID); created if absent, refused if it holds pages",
    )
    p.add_argument(
        "--record", metavar="FILE", help="write the timeline to FILE (new) for zswapd replay"
    )
    p.add_argument(
        "--max-cpu",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="the most of one CPU the shadow may use; a costlier scan stretches the interval "
        "(default 0.25)",
    )
    p.add_argument("--duration", type=duration, help="stop after this long (default: never)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per tick on stdout (the rest on stderr), then a closing "
        '{"summary": ...} once the shadow ended well',
    )
    p.set_defaults(func=cmd_shadow)


def _add_pool_flags(p: argparse.ArgumentParser, whose: str, *, live: bool = False) -> None:
    """The settings a pool is made with (serve's default pool, pools/devices create),
    from their one description (zswapd.settings.POOL_OPTIONS); ``live``: only
    those it takes while it holds pages (pools set)."""
    installed = ", ".join(compressors.available())
    for option in POOL_OPTIONS:
        if live and not option.live:
            continue
        p.add_argument(
            option.flag,
            dest=option.dest,
            type=_argtype(option.parse),
            metavar=option.metavar,
            choices=compressors.available() if option.installed else option.choices,
            help=option.help.format(whose=whose, installed=installed),
        )


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its refusal becomes argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, ZswapdError) as exc:
            # int's own words ("invalid literal for int() with base 10") are
            # Python's, not the user's: say it as argparse does for type=int.
            reason = f"invalid int value: {text!r}" if parse is int else str(exc)
            raise argparse.ArgumentTypeError(reason) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


compressor_spec = _argtype(parse_compressor)


def _levelled() -> list[str]:
    """The installed compressors that take a level (zstd, lz4hc, deflate, ...)."""
    return [n for n in compressors.available() if "level" in compressors.get(n).options]


def compressor_and_level(text: str) -> tuple[str, int | None]:
    """``NAME[:LEVEL]`` with the level checked by the compressor itself, so that
    ``lz4:99`` or ``zstd:99`` is refused as the flag's error (exit 2), before any
    file is read, not when the pool is made.

    Raises:
        ValueError: what :func:`parse_compressor` refuses, a level the algorithm
            takes none of (naming those that do), or out of its range.
    """
    name, level = parse_compressor(text)
    if level is None:
        return name, level
    levelled = _levelled()
    if name not in levelled:
        raise ValueError(
            f"{text[:40]!r}: {name} takes no level; those that do: {', '.join(levelled)}"
        )
    try:
        compressors.get(name, level=level)
    except compressors.CompressorError as exc:
        raise ValueError(f"{text[:40]!r}: {name}'s {exc}") from None
    return name, level


def _add_live_flags(p: argparse.ArgumentParser) -> None:
    """What ``pools set`` changes (PATCH): the settings a pool takes while it holds pages."""
    _add_pool_flags(p, "the pool's", live=True)
    p.add_argument("--no-writeback-limit", action="store_true", help="lift the writeback limit")


# The exit status after stdout's reader went away (``zswapd stats | head``):
# 128 + SIGPIPE, what a shell reports for a Unix tool killed by SIGPIPE, so a
# pipeline under ``set -o pipefail`` sees it as it would for ``grep | head``.
EXIT_BROKEN_PIPE = 141


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message and any notes added on the way up."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "; ".join([text, *getattr(exc, "__notes__", [])])


def _command(args: argparse.Namespace) -> str:
    """The command as typed, its action too: ``pools create``, ``push``."""
    return " ".join(filter(None, [args.command, getattr(args, "action", None)]))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command, mapping every failure a user can meet to one line on stderr.

    The one place for it: any client command (HTTP or wire), serve and bench.
    A daemon that cannot be reached, a ZswapdError (the daemon's answer or a
    check here), an OSError (a file, a socket), a URL httpx refuses, an answer
    not shaped as zswapd's, each print ``zswapd CMD [ACTION]: why`` and exit 1,
    with control characters escaped (a server's text cannot drive the terminal);
    a reader of stdout that went away (``| head``) ends the command silently with
    EXIT_BROKEN_PIPE (in main); Ctrl-C exits 130 with one line saying what was undone.
    Running out of memory is one line too.
    """
    import httpx

    def fail(why: str) -> int:
        print(printable(f"zswapd {_command(args)}: {why}"), file=sys.stderr)
        return 1

    def where() -> str:
        return str(getattr(args, "url", None) or "the daemon")

    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return code
    except BrokenPipeError as exc:
        if _stdout_gone():
            raise  # our reader left: main ends quietly
        return fail(_one_line(exc))  # a socket, not our reader
    except httpx.ConnectError as exc:
        return fail(f"cannot connect to {where()}: {_one_line(exc)}")
    except httpx.HTTPError as exc:  # UnsupportedProtocol among them
        return fail(f"{where()}: {_one_line(exc)}")
    except httpx.InvalidURL as exc:  # not an HTTPError: a URL httpx cannot send
        return fail(f"{where()}: invalid URL: {_one_line(exc)}")
    except json.JSONDecodeError:
        # Something answered 200 that is not zswapd's API: the metrics
        # listener (serve --metrics), another service on the port.
        return fail(
            f"{where()} did not answer as zswapd's HTTP API does "
            "(not JSON: is it the --metrics address, or another service?)"
        )
    except (ZswapdError, ProtocolError, OSError) as exc:  # ProtocolError: a daemon's garbled answer
        return fail(_one_line(exc))
    except MemoryError as exc:  # a process's or a file's pages, more than this machine has
        why = "out of memory" + (
            " (a smaller --sample N needs less)" if args.command == "estimate" else ""
        )
        return fail("; ".join([why, *getattr(exc, "__notes__", [])]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if not hasattr(args, "url"):
            raise  # no server involved: a bug, shown as one
        # JSON, but not shaped as zswapd's answers are: a field missing or of another type.
        return fail(
            f"{where()} did not answer as zswapd's HTTP API does "
            f"({type(exc).__name__}: {_one_line(exc)})"
        )
    except KeyboardInterrupt as exc:
        notes = getattr(exc, "__notes__", [])  # what push undid, say
        said = "interrupted" + (": " + "; ".join(notes) if notes else "")
        print(printable(f"zswapd {_command(args)}: {said}"), file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # ``zswapd stats | head``, ``zswapd --help | head``
        # Python flushes stdout again at exit and would complain there: send it nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error: a status, also in-process
        return exc.code if isinstance(exc.code, int) else 2
    if extra:
        # Said by the subcommand that refused them: its --help lists what it takes.
        prog = " ".join(["zswapd", args.command, *filter(None, [getattr(args, "action", None)])])
        print(
            f"{prog}: unrecognized arguments: {' '.join(extra)} (see {prog} --help)",
            file=sys.stderr,
        )
        return 2
    if args.command in ("writeback", "recompress"):
        problem = idle_seconds_problem(args.type, args.idle_seconds)
        if problem is not None:  # before any request: nothing is asked of the daemon
            print(f"zswapd {args.command}: {problem}", file=sys.stderr)
            return 2
    return _dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
