"""``zswapd bench`` on the command line: its parser and the command of each suite."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import allocator
from zswapd import fastpath
from zswapd.cli_format import positive_int
from zswapd.corpus import load_pages

__all__ = ["add_bench"]


def _load_corpus(args: argparse.Namespace) -> list[bytes] | None:
    if not args.corpus:
        from zswapd.bench.workload import dump_workload

        _progress(args)("dumping the memory of a workload process (pass --corpus for others)")
        args.corpus_files = ["<workload process>"]
        return dump_workload()
    files = [Path(p) for p in args.corpus]
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
    # Which ZsPool ran (compiled or pure, and why): every figure depends on it.
    result["allocator"] = allocator.describe()
    result["page_store"] = fastpath.describe()  # and which batch loops (zswapd/_batch.pyx)
    if getattr(args, "plot", None):
        from zswapd.bench.plots import plot

        try:
            for path in plot(result, Path(args.plot)):
                _progress(args)(f"wrote {path}")
        except RuntimeError as exc:
            print(f"zswapd bench: {exc}", file=sys.stderr)
            return 2
    from zswapd.bench.stats import compressor_versions

    # Compressed sizes, and so every figure, depend on the compressors' versions.
    result["compressor_versions"] = compressor_versions()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(f"allocator: {result['allocator']}")
        print(f"page store: {result['page_store']}")
        for name, v in result["compressor_versions"].items():
            print(f"{name}: {v['version']}; {v['fidelity']}")
        print(render(result))
    return 0


def _bench(module: str, args: argparse.Namespace, **options: Any) -> int:
    """Load the corpus, run ``zswapd.bench.<module>``, print or plot the result."""
    import importlib

    bench = importlib.import_module(f"zswapd.bench.{module}")
    pages = _load_corpus(args)
    if pages is None:
        return 2
    try:
        result = bench.run(pages, progress=_progress(args), **options)
    except RuntimeError as exc:  # a tool the suite needs is missing
        print(f"zswapd bench {module}: {exc}", file=sys.stderr)
        return 2
    code = _emit(args, result, bench.render)
    if module == "soak" and (result["errors"] or result["mismatches"]):
        return 1  # a soak with a wrong byte or an error fails
    return code


def _cmd_bench_allocator(args: argparse.Namespace) -> int:
    return _bench(
        "allocator", args, scales=args.objects, repeats=args.repeats, rss_objects=args.rss_objects
    )


def _cmd_bench_store(args: argparse.Namespace) -> int:
    return _bench("store", args, repeats=args.repeats, speed_pages=args.speed_pages)


def _cmd_bench_http(args: argparse.Namespace) -> int:
    return _bench("http", args, repeats=args.repeats, n_pages=args.pages)


def _cmd_bench_wire(args: argparse.Namespace) -> int:
    return _bench("wire", args, repeats=args.repeats, n_pages=args.pages)


def _cmd_bench_nbd(args: argparse.Namespace) -> int:
    return _bench("nbd", args, repeats=args.repeats)


def _cmd_bench_soak(args: argparse.Namespace) -> int:
    return _bench(
        "soak",
        args,
        clients=args.clients,
        seconds=args.seconds,
        urls=args.url or (),
        pool_limit=args.pool_limit,
    )


def _cmd_bench_writeback(args: argparse.Namespace) -> int:
    if not args.corpus:
        # The figures in the README are of the shared corpus: use it when it is here.
        from zswapd.corpus import default_corpus_files

        args.corpus = [str(p) for p in default_corpus_files()] or None
    return _bench(
        "writeback",
        args,
        quick=args.quick,
        repeats=args.repeats,
        ops=args.ops,
        directory=args.dir,
    )


def _cmd_bench_all(args: argparse.Namespace) -> int:
    from zswapd.bench import suite

    pages = _load_corpus(args)
    if pages is None:
        return 2
    result = suite.run(pages, quick=args.quick, only=args.only, quiet=args.json)
    return _emit(args, result, suite.render)


def add_bench(sub: Any) -> None:
    """``zswapd bench`` and its suites, under the command line's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks: every suite, or one",
        description="With no suite: compressors, allocators, paths (in process, wire, HTTP), "
        "scale and peers (memcached, Redis), side by side in one run.",
    )
    bench.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        help="page files (default: the memory of a workload process it starts)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument("--plot", metavar="DIR", help="write PNG plots here")
    bench.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    bench.add_argument(
        "--only",
        nargs="+",
        choices=["compressors", "allocators", "paths", "scale", "peers"],
        help="run only these suites",
    )
    bench.set_defaults(func=_cmd_bench_all)
    bench_sub = bench.add_subparsers(dest="suite")

    def suite(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        description: str,
        **defaults: int,
    ) -> argparse.ArgumentParser:
        """The subcommand of suite NAME: ``help`` its line in ``zswapd bench
        --help``, ``description`` the line atop its own --help; --corpus and
        --json said once for every suite (argparse parents), ``defaults`` those
        of --repeats and --pages."""
        parser: argparse.ArgumentParser = bench_sub.add_parser(
            name,
            parents=[_suite_options(name, **defaults)],
            help=help,
            description=description,
        )
        parser.set_defaults(func=func)
        return parser

    alloc = suite(
        "allocator",
        _cmd_bench_allocator,
        "allocator efficiency, speed and overhead",
        "Memory efficiency of every allocator and class table on the corpus's lz4 "
        "sizes, under a page budget too; malloc/obj_write/store/obj_read rates against "
        "bare lz4 compress in the same runs, compiled and pure Python; RSS beyond the "
        "pool per object.",
        repeats=5,
    )
    alloc.add_argument(
        "--objects",
        type=int,
        nargs="+",
        metavar="N",
        default=[200_000, 1_000_000],
        help="objects per pool, one efficiency table per count (default: 200000 1000000)",
    )
    alloc.add_argument(
        "--rss-objects",
        type=int,
        metavar="N",
        default=1_000_000,
        help="objects for the RSS figure, 0 to skip it (default: %(default)s)",
    )

    store = suite(
        "store",
        _cmd_bench_store,
        "compressors, store/load paths, recompression",
        "Each compressor's ratio in a page store (same-filled and huge pages as zram "
        "counts them); in-process store/load pages/s against the bare compressor in "
        "the same runs; 2 threads against 1; recompression of an lz4 pool with zstd.",
        repeats=5,
    )
    store.add_argument(
        "--speed-pages",
        type=int,
        metavar="N",
        default=8192,
        help="pages sampled for the speed figures (default: %(default)s)",
    )

    suite(
        "http",
        _cmd_bench_http,
        "store/load over HTTP against bare lz4",
        "Store and load pages/s over HTTP to a daemon it starts (1 and 64 pages a "
        "request, client work included) against bare lz4 in the same runs, and a "
        "request's fixed cost.",
        repeats=5,
        pages=4096,
    )

    suite(
        "wire",
        _cmd_bench_wire,
        "store/load over the wire protocol against bare lz4",
        "Store and load pages/s over the binary protocol on a Unix socket to a daemon "
        "it starts (1 and 64 pages a request, 1 and 4 connections, client work "
        "included) against bare lz4 in the same runs.",
        repeats=5,
        pages=8192,
    )

    suite(
        "nbd",
        _cmd_bench_nbd,
        "nbdcopy into zswapd against nbdkit memory",
        "nbdcopy of the corpus into a zswapd block device and back, against nbdkit "
        "memory (a RAM disk) and nbdkit memory allocator=zstd, on Unix sockets: "
        "throughput and each server's memory.",
        repeats=3,
    )

    soak = suite(
        "soak",
        _cmd_bench_soak,
        "many clients, both transports, every byte checked",
        "Client threads, alternately HTTP and the wire protocol, store, load and free "
        "the corpus's pages in one daemon for a while, comparing every loaded byte, "
        "RSS sampled each second; exits 1 on any error or wrong byte.",
    )
    soak.add_argument(
        "--clients",
        type=int,
        metavar="N",
        default=8,
        help="client threads, half of them HTTP (default: %(default)s)",
    )
    soak.add_argument("--seconds", type=float, default=60, help="how long (default: %(default)s)")
    soak.add_argument(
        "--url",
        action="append",
        help="soak this daemon instead of starting one (repeatable: http://, http+unix://, "
        "unix:// for the wire protocol)",
    )
    soak.add_argument(
        "--pool-limit",
        metavar="SIZE",
        help="start the daemon with this pool limit, e.g. 8M: the soak runs at the limit, "
        "where refused stores (507) are expected, not errors",
    )

    wb = suite(
        "writeback",
        _cmd_bench_writeback,
        "the second tier: a pool at a third of the working set, lru and manual writeback",
        "A pool limited to a third of the working set, with an lru backing file, under "
        "a Zipf-skewed stream beside one with no limit; and zram's manual writeback "
        "read back from the file: pages/s, pages written back and read, latencies.",
    )
    wb.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    wb.add_argument(
        "--repeats",
        type=positive_int,
        metavar="N",
        help="runs per figure (default: 3; with --quick: 1)",
    )
    wb.add_argument(
        "--ops",
        type=positive_int,
        metavar="N",
        help="accesses per stream (default: 200000; with --quick: 4000)",
    )
    wb.add_argument(
        "--dir", metavar="DIR", help="where the backing files go (default: the temp dir)"
    )


# Where a suite's pages come from without --corpus (_load_corpus, _cmd_bench_writeback).
_WORKLOAD = "the memory of a workload process it starts"
_CORPUS_DEFAULTS = {"writeback": "../shared/corpus if present, else " + _WORKLOAD}


def _suite_options(
    suite: str, *, repeats: int | None = None, pages: int | None = None
) -> argparse.ArgumentParser:
    """What every bench suite takes: its pages and JSON output; ``repeats``,
    ``pages``: the defaults of --repeats and --pages where the suite has them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        help=f"page files (default: {_CORPUS_DEFAULTS.get(suite, _WORKLOAD)})",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    if repeats is not None:
        common.add_argument(
            "--repeats",
            type=int,
            metavar="N",
            default=repeats,
            help="runs per figure (default: %(default)s)",
        )
    if pages is not None:
        common.add_argument(
            "--pages",
            type=int,
            metavar="N",
            default=pages,
            help="pages sampled (default: %(default)s)",
        )
    return common
