"""Recognising a model upload by its content, never by its name: an R serialization (any
compression, read only as far as its header), a tar.gz or a zip bundle."""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deployer.artifacts import ArtifactRejected


@dataclass(frozen=True)
class RdsHeader:
    """What the first bytes of an R serialization say, without deserializing anything."""

    compression: str  # gzip, bzip2, xz or none
    format: str  # xdr (binary big-endian), binary (native) or ascii
    serialization_version: int
    writer_r_version: str
    min_reader_r_version: str


_RDS_FORMATS = {b"X\n": "xdr", b"B\n": "binary", b"A\n": "ascii"}


def _r_version(packed: int) -> str:
    return f"{packed >> 16}.{(packed >> 8) & 0xFF}.{packed & 0xFF}"


def parse_rds_header(head: bytes, compression: str = "none") -> RdsHeader | None:
    """The header of an (already decompressed) R serialization stream, or None."""
    marker = head[:2]
    if marker not in _RDS_FORMATS:
        return None
    fmt = _RDS_FORMATS[marker]
    try:
        if fmt == "ascii":
            fields = head[2:].split(b"\n")[:3]
            version, writer, reader = (int(field) for field in fields)
        else:
            endian = "<" if fmt == "binary" else ">"
            version, writer, reader = struct.unpack(f"{endian}iii", head[2:14])
    except (ValueError, struct.error):
        return None
    if version not in (2, 3) or not 0 < writer < 1 << 24:
        return None
    return RdsHeader(compression, fmt, version, _r_version(writer), _r_version(reader))


_HEAD = 512
# bzip2 compresses in blocks of up to 900 kB: its first output needs a whole block.
_MAX_SNIFF_INPUT = 4 * 1024 * 1024


def _compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return "none"


def _decompressed_head(stream: IO[bytes], head: bytes, compression: str) -> bytes:
    """The first bytes of a possibly compressed stream, reading only as far as needed."""
    if compression == "none":
        return head[:_HEAD]
    decompressor: Any = {
        "gzip": lambda: zlib.decompressobj(wbits=31),
        "bzip2": bz2.BZ2Decompressor,
        "xz": lzma.LZMADecompressor,
    }[compression]()
    inner = b""
    consumed = 0
    data = head
    try:
        while data and len(inner) < _HEAD and consumed < _MAX_SNIFF_INPUT:
            consumed += len(data)
            # max_length: never inflate more than the header we look at (bombs).
            inner += decompressor.decompress(data, _HEAD - len(inner))
            if getattr(decompressor, "eof", False):
                break
            data = stream.read(64 * 1024)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
        return inner[:_HEAD]
    return inner[:_HEAD]


@dataclass(frozen=True)
class Sniffed:
    kind: str  # rds, tar.gz or zip (ModelVersion.ArtifactKind values)
    rds: RdsHeader | None = None


_SAVE_HINT = (
    "this is an R workspace written by save() (an .RData file), not a single model: "
    "save the model with saveRDS(model, 'model.rds') and upload that file"
)


def sniff(head: bytes) -> Sniffed:
    """Recognise a model upload by its first bytes, never by its name."""
    return sniff_stream(io.BytesIO(head))


def sniff_stream(stream: IO[bytes]) -> Sniffed:
    """Recognise a model by content, reading from `stream` only as far as needed."""
    head = stream.read(4096)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return Sniffed("zip")
    compression = _compression(head)
    inner = _decompressed_head(stream, head, compression)
    if inner.startswith((b"RDX2\n", b"RDX3\n", b"RDA2\n", b"RDA3\n", b"RDB2\n", b"RDB3\n")):
        raise ArtifactRejected(_SAVE_HINT)
    header = parse_rds_header(inner, compression)
    if header is not None:
        return Sniffed("rds", header)
    if inner[257:262] == b"ustar":
        if compression == "gzip":
            return Sniffed("tar.gz")
        raise ArtifactRejected(f"{compression}-compressed tar bundles are not supported: use .tar.gz or .zip")
    if compression != "none" and not inner:
        raise ArtifactRejected(f"the file is {compression}-compressed but corrupt or empty")
    raise ArtifactRejected(
        "unrecognised file format: upload an R model saved with saveRDS() (.rds, any compression) "
        "or a .tar.gz / .zip bundle holding model.rds"
    )


def sniff_file(path: Path) -> Sniffed:
    with path.open("rb") as handle:
        return sniff_stream(handle)
