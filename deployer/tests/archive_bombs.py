"""Hostile archives for the intake tests, built small: headers that tarfile would read whole
(GNU long names, PAX records), zip central directories far larger than their members need,
and gzip streams that inflate a thousandfold. No Django: the memory probe imports it too."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Iterator

# What sits after the hostile part, so a reader that got past it would find a valid bundle.
MODEL = b"X\n\x00\x00\x00\x03\x00\x04\x04\x00\x00\x03\x05\x00" + bytes(64)


def _gzip(parts: Iterator[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = io.BytesIO()
    for part in parts:
        out.write(compressor.compress(part))
    out.write(compressor.flush())
    return out.getvalue()


def _padded(size: int, filler: bytes = b"a") -> Iterator[bytes]:
    chunk = filler * (1024 * 1024)
    whole, rest = divmod(size, len(chunk))
    for _ in range(whole):
        yield chunk
    yield filler * rest
    yield bytes(-size % tarfile.BLOCKSIZE)


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _extended_bomb(kind: bytes, size: int, filler: bytes) -> bytes:
    header = tarfile.TarInfo("././@LongLink")
    header.type = kind
    header.size = size

    def parts() -> Iterator[bytes]:
        yield header.tobuf(tarfile.GNU_FORMAT)
        yield from _padded(size, filler)
        yield _member("model.rds", MODEL)
        yield bytes(2 * tarfile.BLOCKSIZE)

    return _gzip(parts())


def long_name_bomb(size: int) -> bytes:
    """A .tar.gz whose first header is a GNU long name of `size` bytes."""
    return _extended_bomb(tarfile.GNUTYPE_LONGNAME, size, b"a")


def pax_bomb(size: int) -> bytes:
    """A .tar.gz whose first header is a PAX record block of `size` bytes."""
    return _extended_bomb(tarfile.XHDTYPE, size, b"a")


def long_name_chain(count: int) -> bytes:
    """A .tar.gz with `count` small GNU long-name headers in a row (tarfile recurses per header)."""
    header = tarfile.TarInfo("././@LongLink")
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = 100
    block = header.tobuf(tarfile.GNU_FORMAT) + b"a" * 99 + b"\0" + bytes(412)
    return _gzip(iter([block * count, _member("model.rds", MODEL), bytes(1024)]))


def gzip_bomb(size: int) -> bytes:
    """A .tar.gz holding model.rds and a `size`-byte member of zeros, a thousandfold smaller."""
    info = tarfile.TarInfo("padding.bin")
    info.size = size

    def parts() -> Iterator[bytes]:
        yield _member("model.rds", MODEL)
        yield info.tobuf(tarfile.USTAR_FORMAT)
        yield from _padded(size, b"\0")
        yield bytes(2 * tarfile.BLOCKSIZE)

    return _gzip(parts())


_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")


def zip_with_directory(entries: int, *, extra: int = 0, comment: int = 0, declared: int | None = None) -> bytes:
    """A stored zip with model.rds and a central directory of `entries` entries, all naming
    model.rds at offset 0, each with `extra` bytes of extra field; the archive comment has
    `comment` bytes and the end record declares `declared` entries (default: `entries`)."""
    name = b"model.rds"
    crc = zlib.crc32(MODEL)
    padding = _extra_field(extra)
    local = _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(MODEL), len(MODEL), len(name), 0) + name + MODEL
    entry = (
        _CENTRAL.pack(
            b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, len(MODEL), len(MODEL), len(name), len(padding), 0, 0, 0, 0, 0
        )
        + name
        + padding
    )
    directory = entry * entries
    count = min(0xFFFF, entries if declared is None else declared)
    end = _END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), len(local), comment)
    return local + directory + end + b"c" * comment


def _extra_field(size: int) -> bytes:
    """An unknown extra field (id 0xCAFE) of about `size` bytes; zipfile keeps it."""
    if size < 4:
        return b""
    body = min(size, 0xFFFF) - 4
    return struct.pack("<2H", 0xCAFE, body) + b"e" * body
