"""The ``zswapd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zswapd import __version__
from zswapd.corpus import default_corpus_files, load_pages

__all__ = ["main"]


def _cmd_serve(args: argparse.Namespace) -> int:
    # The daemon is issue 4's work; say so rather than pretend.
    print(
        "zswapd serve: the daemon is not built yet (HTTP API, binary protocol and metrics "
        "are still to come); today zswapd offers the allocator library and "
        "'zswapd bench allocator'.",
        file=sys.stderr,
    )
    return 2


def _cmd_bench(args: argparse.Namespace) -> int:
    from zswapd.bench import allocator as bench_allocator

    files = [Path(p) for p in args.corpus] if args.corpus else default_corpus_files()
    if not files:
        print("zswapd bench: no corpus found; pass --corpus FILE...", file=sys.stderr)
        return 2
    try:
        pages = load_pages(files)
    except (OSError, ValueError) as exc:
        print(f"zswapd bench: {exc}", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        if not args.json:
            print(f"... {msg}", file=sys.stderr, flush=True)

    result = bench_allocator.run(
        pages,
        scales=args.objects,
        repeats=args.repeats,
        rss_objects=args.rss_objects,
        progress=progress,
    )
    result["corpus_files"] = [str(f) for f in files]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(bench_allocator.render(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zswapd", description="A userspace emulator of Linux compressed swap (zram/zswap)."
    )
    parser.add_argument("--version", action="version", version=f"zswapd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the daemon (not built yet)")
    serve.set_defaults(func=_cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="suite", required=True)
    alloc = bench_sub.add_parser("allocator", help="allocator efficiency, speed and overhead")
    alloc.add_argument("--corpus", nargs="+", metavar="FILE", help="page files (default: shared)")
    alloc.add_argument(
        "--objects",
        type=int,
        nargs="+",
        default=[200_000, 1_000_000],
        help="objects per pool, one efficiency table per count",
    )
    alloc.add_argument("--repeats", type=int, default=5, help="runs per speed figure")
    alloc.add_argument(
        "--rss-objects", type=int, default=1_000_000, help="objects for the RSS figure (0: skip)"
    )
    alloc.add_argument("--json", action="store_true", help="print JSON")
    alloc.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
