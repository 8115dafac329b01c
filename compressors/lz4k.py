"""LZ4 block compression as Linux's lib/lz4 does it: the reference, in pure Python.

Why this exists: zram's lz4 backend calls ``LZ4_compress_fast`` from the kernel's
own copy of the LZ4 1.8-series compressor, and the liblz4 every python-lz4 release
bundles (1.9.x) makes different match-finding choices: on real memory 63-92% of
pages come out a few bytes longer or shorter than the kernel's, so the class of
the object, and with it every zsmalloc figure, drifts from a real zram's.  This
module makes the kernel's choices, so a page compresses to the kernel's length;
the output is an ordinary LZ4 block that any LZ4 decoder (python-lz4 included)
reads back.  ``compressors._lz4k`` is the same algorithm compiled (Cython), byte
for byte; this module stays the readable description and the test oracle.

The choices, for one call on an input under 64 KiB (a 4096-byte page):

- a fresh, zeroed hash table of 2**13 16-bit positions (LZ4_MEMORY_USAGE 14, the
  "byU16" table the series uses below 64 KiB, one hash bit more than the 32-bit
  table); a zeroed slot therefore points at position 0, which is tried as a
  candidate like any other;
- the hash of a position is the 32-bit little-endian word there times
  2654435761, modulo 2**32, shifted right by 32 - 13;
- the search walks forward from the last match's end; after every 64 misses
  the step grows by one (``step = searched >> 6``, ``searched`` starting at
  ``acceleration << 6``); each probed position is entered in the table;
- a candidate is a match when its 4 bytes equal the current 4 (no distance
  check: below 64 KiB every position is within reach of a 16-bit offset);
- a match is extended backwards over equal bytes, never past the end of the
  previous sequence nor before the input's start, then forwards up to 5 bytes
  before the end (LASTLITERALS);
- no match may start later than 12 bytes before the end (MFLIMIT), and an
  input of fewer than 13 bytes is all literals;
- after a match, the position two bytes before its end is entered in the
  table, and the match's end is tried at once as the start of the next match
  (a sequence with no literals) before the search resumes one byte further;
- lengths: a token's high nibble is the literal count, its low nibble the match
  length minus 4; 15 in a nibble means more bytes follow, each adding up to 255,
  the last one below 255.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_ACCELERATION", "MAX_INPUT_SIZE", "compress"]

MINMATCH: Final = 4
#: the last 5 bytes are always literals (the format's end-of-block rule).
LASTLITERALS: Final = 5
#: no match starts within the last 12 bytes (the series' MFLIMIT: 8 + MINMATCH).
MFLIMIT: Final = 12
#: every 2**6 failed probes, the search step grows by one byte.
SKIPTRIGGER: Final = 6
#: LZ4_MEMORY_USAGE 14 gives LZ4_HASHLOG 12; the 16-bit table has twice the
#: slots in the same 16 KiB, so its hash keeps 13 bits.
HASH_BITS: Final = 13
_PRIME: Final = 2654435761
#: the largest input the 16-bit table serves (LZ4_64Klimit - 1); past it the
#: kernel switches to a 32-bit table and another hash, which pages never need.
MAX_INPUT_SIZE: Final = 64 * 1024 + MFLIMIT - 2
#: liblz4 1.9's LZ4_ACCELERATION_MAX; the kernel has no bound, but past about
#: 2**26 its 32-bit probe counter would wrap, which nobody wants emulated.
MAX_ACCELERATION: Final = 65537

_RUN_MASK: Final = 15
_ML_MASK: Final = 15


def _length_bytes(extra: int) -> bytes:
    """The bytes after a nibble of 15: ``extra`` as 255s then the remainder."""
    return b"\xff" * (extra // 255) + bytes((extra % 255,))


def compress(src: bytes | bytearray | memoryview, acceleration: int = 1) -> bytes:
    """An LZ4 block of ``src`` (no size prefix), as the kernel's LZ4_compress_fast makes it.

    Args:
        src: at most MAX_INPUT_SIZE bytes.
        acceleration: the kernel's ``acceleration`` (zram's lz4 level); 1 is the
            default and values below 1 count as 1, as in the kernel.

    Raises:
        ValueError: ``src`` is longer than MAX_INPUT_SIZE, or ``acceleration``
            is above MAX_ACCELERATION.
    """
    data = bytes(src)
    n = len(data)
    if n > MAX_INPUT_SIZE:
        raise ValueError(f"lz4k compresses at most {MAX_INPUT_SIZE} bytes, not {n}")
    if acceleration > MAX_ACCELERATION:
        raise ValueError(f"acceleration must be at most {MAX_ACCELERATION}, not {acceleration}")
    acceleration = max(1, acceleration)
    out = bytearray()
    anchor = 0
    if n >= MFLIMIT + 1:
        anchor = _sequences(data, acceleration, out)
    _emit_last_literals(data, anchor, out)
    return bytes(out)


def _sequences(data: bytes, acceleration: int, out: bytearray) -> int:
    """Emit every sequence that ends in a match; return where the last literals start."""
    n = len(data)
    mflimit = n - MFLIMIT
    matchlimit = n - LASTLITERALS
    shift = 32 - HASH_BITS
    table = [0] * (1 << HASH_BITS)

    def word(p: int) -> int:
        return int.from_bytes(data[p : p + 4], "little")

    def hash_at(p: int) -> int:
        return ((word(p) * _PRIME) & 0xFFFFFFFF) >> shift

    table[hash_at(0)] = 0
    anchor = 0
    ip = 1
    forward_h = hash_at(ip)
    while True:
        # The search: probe forward, the step growing as misses accumulate.
        forward_ip = ip
        step = 1
        searched = acceleration << SKIPTRIGGER
        while True:
            h = forward_h
            ip = forward_ip
            forward_ip += step
            step = searched >> SKIPTRIGGER
            searched += 1
            if forward_ip > mflimit:
                return anchor
            match = table[h]
            forward_h = hash_at(forward_ip)
            table[h] = ip
            if word(match) == word(ip):
                break
        # Extend backwards over bytes the literals would otherwise carry.
        while ip > anchor and match > 0 and data[ip - 1] == data[match - 1]:
            ip -= 1
            match -= 1
        token = len(out)
        out.append(0)
        literals = ip - anchor
        if literals >= _RUN_MASK:
            out[token] = _RUN_MASK << 4
            out += _length_bytes(literals - _RUN_MASK)
        else:
            out[token] = literals << 4
        out += data[anchor:ip]
        while True:  # one match; loops while the next starts where it ended
            out += (ip - match).to_bytes(2, "little")
            length = _count(data, ip + MINMATCH, match + MINMATCH, matchlimit)
            ip += MINMATCH + length
            if length >= _ML_MASK:
                out[token] += _ML_MASK
                out += _length_bytes(length - _ML_MASK)
            else:
                out[token] += length
            anchor = ip
            if ip > mflimit:
                return anchor
            table[hash_at(ip - 2)] = ip - 2
            h = hash_at(ip)
            match = table[h]
            table[h] = ip
            if word(match) != word(ip):
                break
            token = len(out)
            out.append(0)
        ip += 1
        forward_h = hash_at(ip)


def _count(data: bytes, ip: int, match: int, limit: int) -> int:
    """How many bytes from ``ip`` equal those from ``match``, stopping at ``limit``."""
    start = ip
    while ip < limit and data[ip] == data[match]:
        ip += 1
        match += 1
    return ip - start


def _emit_last_literals(data: bytes, anchor: int, out: bytearray) -> None:
    run = len(data) - anchor
    if run >= _RUN_MASK:
        out.append(_RUN_MASK << 4)
        out += _length_bytes(run - _RUN_MASK)
    else:
        out.append(run << 4)
    out += data[anchor:]
