"""The ``zswapd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _load_corpus(args: argparse.Namespace) -> list[bytes] | None:
    files = [Path(p) for p in args.corpus] if args.corpus else default_corpus_files()
    if not files:
        print("zswapd bench: no corpus found; pass --corpus FILE...", file=sys.stderr)
        return None
    try:
        pages = load_pages(files)
    except (OSError, ValueError) as exc:
        print(f"zswapd bench: {exc}", file=sys.stderr)
        return None
    args.corpus_files = [str(f) for f in files]
    return pages


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not args.json:
            print(f"... {msg}", file=sys.stderr, flush=True)

    return say


def _emit(args: argparse.Namespace, result: dict[str, Any], render: Callable[..., str]) -> int:
    result["corpus_files"] = args.corpus_files
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(render(result))
    return 0


def _cmd_bench_allocator(args: argparse.Namespace) -> int:
    from zswapd.bench import allocator as bench

    pages = _load_corpus(args)
    if pages is None:
        return 2
    result = bench.run(
        pages,
        scales=args.objects,
        repeats=args.repeats,
        rss_objects=args.rss_objects,
        progress=_progress(args),
    )
    return _emit(args, result, bench.render)


def _cmd_bench_store(args: argparse.Namespace) -> int:
    from zswapd.bench import store as bench

    pages = _load_corpus(args)
    if pages is None:
        return 2
    result = bench.run(
        pages, repeats=args.repeats, speed_pages=args.speed_pages, progress=_progress(args)
    )
    return _emit(args, result, bench.render)


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
    alloc.set_defaults(func=_cmd_bench_allocator)

    store = bench_sub.add_parser("store", help="compressors, store/load paths, recompression")
    store.add_argument("--corpus", nargs="+", metavar="FILE", help="page files (default: shared)")
    store.add_argument("--repeats", type=int, default=5, help="runs per speed figure")
    store.add_argument(
        "--speed-pages", type=int, default=8192, help="pages sampled for the speed figures"
    )
    store.add_argument("--json", action="store_true", help="print JSON")
    store.set_defaults(func=_cmd_bench_store)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
