"""The client-side commands that move pages: push, fetch, free; writeback, recompress.

A handles file (written by push, read by fetch and free) is text, one page a
line, in push order::

    # zswapd handles v1 pool=default
    <handle>\t<source>\t<offset>

``source`` is the file pushed or ``pid:PID:MAPPING``; ``offset`` the byte offset
in the file or the page's address (hex) in the process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from tqdm import tqdm

from zswapd.cli_format import count, excerpt, printable
from zswapd.client import Client
from zswapd.errors import ConfigError, StaleHandleError, UnknownPoolError, ZswapdError
from zswapd.pagefile import PageFile, open_page_file
from zswapd.pool import PAGE_SIZE
from zswapd.procmem import ProcessMemory, ProcessPages, open_process

__all__ = [
    "cmd_fetch",
    "cmd_free",
    "cmd_push",
    "cmd_recompress",
    "cmd_writeback",
    "idle_seconds_problem",
    "open_client",
    "pool_flags",
]

HEADER = "# zswapd handles v1"
CHUNK = 256  # pages read and sent at a time


def open_client(args: argparse.Namespace) -> Client:
    """The client for ``--url`` with ``--token-file``'s token (or $ZSWAPD_TOKEN_FILE)."""
    token = None
    token_file = args.token_file or os.environ.get("ZSWAPD_TOKEN_FILE")
    if token_file:
        token = Path(token_file).read_text().strip()
    try:
        return Client(args.url, token=token, batch_pages=getattr(args, "batch_pages", None))
    except ValueError as exc:  # a URL or --batch-pages that will not do
        raise ConfigError(str(exc)) from exc


def _file_pages(files: list[PageFile]) -> Iterator[tuple[bytes, str, str]]:
    """The pages of opened page files, read through the descriptors checked."""
    for page_file in files:
        for offset in range(0, page_file.pages * PAGE_SIZE, PAGE_SIZE):
            page = page_file.read_page(offset)
            if page is None:
                raise ConfigError(f"{page_file.name}: shrank while being read (at byte {offset})")
            yield page, page_file.name, str(offset)


def _pid_pages(process: ProcessMemory) -> tuple[Iterator[tuple[bytes, str, str]], ProcessPages]:
    source = ProcessPages(process)

    def gen() -> Iterator[tuple[bytes, str, str]]:
        for rec in source:
            yield rec.data, f"pid:{process.pid}:{rec.path or '[anon]'}", hex(rec.address)

    return gen(), source


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file in ``path``'s directory (so a rename onto it is atomic)."""
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: no directory {str(path.parent)!r}")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(name)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Make the finished temporary ``tmp`` the handles file ``out``, atomically.

    Without ``force`` a link, which fails if ``out`` appeared meanwhile, so a
    handles file is never replaced unasked even by a push running beside this one.
    """
    if force:
        os.replace(tmp, out)
    else:
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise ConfigError(f"{out} exists; --force replaces it") from None
        tmp.unlink()
    dir_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def cmd_push(args: argparse.Namespace) -> int:
    """Store pages; their handles file appears only once every store is acknowledged.

    The handles go to a temporary file beside ``--out`` as each request is
    answered, which is fsynced and renamed into place at the end.  If anything
    fails on the way (a read, a refused store, Ctrl-C) the pages stored so far are
    freed and the temporary removed: a push either leaves its handles file or
    leaves nothing, neither file nor pages.  An existing handles file is kept
    unless ``--force`` is given: losing it would orphan the pages it names.
    """
    if bool(args.files) == (args.pid is not None):
        raise ConfigError("push takes FILE... or --pid PID, not both and not neither")
    out = Path(args.out or f"zswapd-{args.pool}.handles")
    if not args.force and out.exists():
        raise ConfigError(f"{out} exists; --force replaces it (its pages stay stored)")
    with ExitStack() as opened:
        # Every source opened, so checked, before anything is stored; read only
        # through what was opened (a pid reused, a path replaced, is not).
        if args.pid is not None:
            pages, proc = _pid_pages(opened.enter_context(open_process(args.pid)))
            total = None
        else:
            files = [opened.enter_context(open_page_file(name)) for name in args.files]
            total = sum(f.pages for f in files)
            if not total:
                raise ConfigError(f"no pages to push in {', '.join(args.files)} (0 bytes by size)")
            pages, proc = _file_pages(files), None
        before, after, stored = _push(args, pages, total, out)
    same = after["same_pages"] - before["same_pages"]
    huge = after["huge_pages_since"] - before["huge_pages_since"]
    orig = after["orig_data_size"] - before["orig_data_size"]
    mem = after["mem_used_total"] - before["mem_used_total"]
    compr = after["compr_data_size"] - before["compr_data_size"]
    ratio = f"{orig / mem:.2f}" if mem > 0 else "n/a"
    cratio = f"{orig / compr:.2f}" if compr > 0 else "n/a"
    n = len(stored)
    print(
        f"stored {count(n, 'page')} ({n * PAGE_SIZE / 2**20:.1f} MiB) in pool {args.pool!r}: "
        f"{same} same-filled, {huge} huge; ratio {ratio} (orig/mem_used), "
        f"{cratio} (orig/compr); handles in {out}"
    )
    if proc is not None and not proc.exact:
        print("note: page flags were unreadable (not root?): zero and file pages included")
    return 0


def _push(
    args: argparse.Namespace,
    pages: Iterator[tuple[bytes, str, str]],
    total: int | None,
    out: Path,
) -> tuple[dict[str, int], dict[str, int], list[int]]:
    """Store ``pages``, then publish their handles file (see cmd_push).

    Returns:
        the pool's mm_stat before and after, and the handles stored.
    """
    with open_client(args) as client, _ctrl_c_between_requests() as interrupted:
        before = client.stats(args.pool)["mm_stat"]
        stored: list[int] = []
        fd, tmp = _temp_beside(out)
        try:
            with (
                os.fdopen(fd, "w") as handles_file,
                tqdm(total=total, unit="page", disable=args.quiet or None, file=sys.stderr) as bar,
            ):
                handles_file.write(f"{HEADER} pool={args.pool}\n")
                chunk: list[tuple[bytes, str, str]] = []
                for item in pages:
                    chunk.append(item)
                    if len(chunk) == CHUNK:
                        stored += _push_chunk(client, args.pool, chunk, handles_file)
                        bar.update(len(chunk))
                        chunk = []
                        interrupted.check()
                if chunk:
                    stored += _push_chunk(client, args.pool, chunk, handles_file)
                    bar.update(len(chunk))
                    interrupted.check()
                if not stored:  # a process with no page swap would see
                    raise ConfigError(f"--pid {args.pid}: no pages to push")
                handles_file.flush()
                os.fsync(handles_file.fileno())
            _publish(tmp, out, args.force)
        except BaseException as exc:
            _undo_push(client, args.pool, stored, tmp, exc)
            raise
        after = client.stats(args.pool)["mm_stat"]
    return before, after, stored


class _Interrupted:
    """Whether Ctrl-C was pressed; :meth:`check` raises it where it is safe."""

    def __init__(self) -> None:
        self.pressed = False

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_between_requests() -> Iterator[_Interrupted]:
    """Ctrl-C taken between store requests, not during one.

    A request interrupted in flight may still be stored by the daemon, its
    handles never seen, so never freed: the first Ctrl-C is held until the
    request in flight is answered (a second one interrupts at once).
    """
    flag = _Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals reach the main thread only
        return

    def held(signum: int, frame: object) -> None:
        flag.pressed = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is not held

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, held)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _undo_push(client: Client, pool: str, stored: list[int], tmp: Path, exc: BaseException) -> None:
    """Free what a failed push stored and drop its temporary handles file.

    If the free fails too (the daemon went away), the temporary is kept and the
    error says where: those handles are the only way to reach the pages.
    """
    if stored:
        try:
            client.free(stored, pool=pool)
        except Exception:
            exc.add_note(
                f"{count(len(stored), 'page')} stored before it not freed: handles in {tmp}"
            )
            return
    tmp.unlink(missing_ok=True)
    if isinstance(exc, KeyboardInterrupt):
        # Ctrl-C says nothing of its own: say that nothing was left behind.
        exc.add_note(f"freed {count(len(stored), 'page')}, no handles file written")


def _push_chunk(
    client: Client, pool: str, chunk: list[tuple[bytes, str, str]], out: TextIO
) -> list[int]:
    handles = client.store([page for page, _, _ in chunk], pool=pool)
    out.writelines(f"{h}\t{src}\t{off}\n" for h, (_, src, off) in zip(handles, chunk, strict=True))
    return handles


def _source_name(path: str) -> str:
    return "stdin" if path == "-" else path


def read_handles(path: str) -> tuple[list[int], str | None]:
    """Handles from a handles file (or one handle a line); and the pool it names.

    Raises:
        ConfigError: not text, or a line that is not a handle (quoted in part only:
            a page file given by mistake makes a short message, not its contents).
    """
    handles: list[int] = []
    pool = None
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{_source_name(path)}: not a zswapd handles file") from None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            if "pool=" in line:
                pool = line.split("pool=", 1)[1].split()[0]
            continue
        if not line.strip():
            continue
        field = line.split("\t", 1)[0].strip()
        if not field.isdigit():
            raise ConfigError(
                f"{_source_name(path)}:{n}: not a handle: {excerpt(field)} "
                "(not a zswapd handles file?)"
            )
        handles.append(int(field))
    return handles, pool


def _gone_hint(exc: ZswapdError) -> None:
    """A handle or pool the daemon does not know: say the likely why."""
    if isinstance(exc, StaleHandleError | UnknownPoolError):
        exc.add_note("freed already, or stored in another daemon/pool?")


def cmd_fetch(args: argparse.Namespace) -> int:
    handles, pool = read_handles(args.handles)
    pool = args.pool or pool or "default"
    try:
        if args.output == "-":  # stdout, as for any Unix tool
            _fetch_into(args, handles, pool, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            print(f"fetched {count(len(handles), 'page')} from pool {pool!r}", file=sys.stderr)
            return 0
        output = Path(args.output)
        # Into a temporary beside it, renamed at the end: a failed fetch leaves no
        # half-written output (nor an empty one if the daemon is not there).
        fd, tmp = _temp_beside(output)
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch_into(args, handles, pool, out)
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except ZswapdError as exc:
        _gone_hint(exc)
        raise
    print(f"fetched {count(len(handles), 'page')} from pool {pool!r} into {args.output}")
    return 0


def _fetch_into(args: argparse.Namespace, handles: list[int], pool: str, out: BinaryIO) -> None:
    with open_client(args) as client:
        for i in tqdm(range(0, len(handles), 1024), unit="batch", disable=args.quiet or None):
            for page in client.load(handles[i : i + 1024], pool=pool):
                out.write(page)


def cmd_free(args: argparse.Namespace) -> int:
    """Free the pages of a handles file, then remove the file (``--keep``: keep it):
    its handles name nothing any more, and a push to the same file may go ahead."""
    handles, pool = read_handles(args.handles)
    pool = args.pool or pool or "default"
    try:
        with open_client(args) as client:
            client.free(handles, pool=pool)
    except ZswapdError as exc:
        _gone_hint(exc)
        raise
    removed = ""
    if args.handles != "-" and not args.keep:
        os.unlink(args.handles)
        removed = f"; removed {args.handles}"
    print(f"freed {count(len(handles), 'page')} in pool {pool!r}{removed}")
    return 0


# The types whose pages are picked by idleness: zram marks pages idle first
# (``echo all > idle`` or ``echo N > idle``), so the age is part of the request.
IDLE_TYPES = ("idle", "huge_idle")


def idle_seconds_problem(type: str, idle_seconds: float | None) -> str | None:
    """Why ``--idle-seconds`` does not fit ``--type`` (None: it fits).

    Required for the idle types (0: every page, zram's ``all``): a default would
    silently write back or recompress every page.  Refused for the others, which
    would ignore it.
    """
    if type in IDLE_TYPES:
        if idle_seconds is None:
            return f"--type {type} needs --idle-seconds N (0: every page, zram's 'all')"
        if idle_seconds < 0:
            return f"--idle-seconds must be 0 or more, not {idle_seconds:g}"
    elif idle_seconds is not None:
        return f"--idle-seconds is for --type {' or '.join(IDLE_TYPES)}, not {type}"
    return None


def cmd_writeback(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        result = client.writeback(
            args.pool,
            type=args.type,
            idle_seconds=args.idle_seconds,
            max_pages=args.max_pages,
        )
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        # As the text mode: a writeback that stopped early failed (zram answers EIO).
        return 0 if result["stopped"] is None else 1
    limit = result["writeback_limit"]
    # Every figure is the server's to send: escaped, as any string it sends.
    noun = count(result["candidates"], f"{args.type} page")
    said = f"wrote back {result['written_back']} of {noun} "
    said += f"of pool {args.pool!r}" + ("" if limit is None else f"; writeback_limit {limit} left")
    print(printable(said))
    if result["stopped"] is not None:
        # The server's words: escaped, so that no answer can drive the terminal.
        why = f"{result['stopped']}: {result['error'] or 'limit reached'}"
        print(f"stopped early: {printable(why)}")
        return 1
    return 0


def cmd_recompress(args: argparse.Namespace) -> int:
    """zram's ``recompress``: huge and/or idle pages with a secondary algorithm."""
    params: dict[str, Any] = {"type": args.type}
    if args.idle_seconds is not None:
        params["idle_seconds"] = args.idle_seconds
    optional = {"algo": args.algo, "level": args.level, "threshold": args.threshold}
    params.update({k: v for k, v in optional.items() if v is not None})
    with open_client(args) as client:
        result = client.recompress(args.pool, **params)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(
        printable(
            f"recompressed {result['recompressed']} of "
            f"{count(result['candidates'], f'{args.type} page')} "
            f"of pool {args.pool!r}: {result['bytes_saved']} bytes saved, "
            f"{result['not_smaller']} not smaller, {result['alloc_failed']} allocation failures"
        )
    )
    return 0


def pool_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The pool settings given as flags (None where not given), by POOL_OPTIONS.

    ``--compressor`` comes parsed as (name, level or None): ``zstd:9`` and
    ``--compressor zstd --level 9`` are the same pool; two different levels are refused.

    Raises:
        ConfigError: the two levels disagree.
    """
    from zswapd.settings import POOL_OPTIONS

    values = {option.key: getattr(args, option.dest) for option in POOL_OPTIONS}
    compressor, level = values["compressor"] or (None, None)
    if level is not None and args.level is not None and level != args.level:
        raise ConfigError(
            f"--compressor {compressor}:{level} and --level {args.level} disagree: give one"
        )
    return {**values, "compressor": compressor, "level": args.level if level is None else level}
