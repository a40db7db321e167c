"""Reading a bundle member by member within bounds: a tar.gz through gzip and a budget of
decompressed bytes with tar headers refused before tarfile reads them, a zip whose end record
is checked before zipfile reads its directory. Every member is a regular file or folder with a
safe relative name, within the member count and unpacked size of `BundleLimits`."""

from __future__ import annotations

import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from deployer.artifacts import ArtifactRejected


@dataclass(frozen=True)
class BundleLimits:
    max_members: int
    max_unpacked_bytes: int

    @classmethod
    def from_settings(cls) -> BundleLimits:
        return cls(settings.MAX_BUNDLE_MEMBERS, settings.MAX_UNPACKED_BYTES)


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    is_dir: bool


CORRUPT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def corrupt_bundle(kind: str, exc: Exception) -> ArtifactRejected:
    return ArtifactRejected(f"the .{kind} bundle is corrupt: {exc}")


_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 1024


def _clean_name(raw: str) -> str:
    """A member name as a safe relative POSIX path, or ArtifactRejected."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArtifactRejected(f"the archive member '{raw}' has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArtifactRejected(f"the archive member '{raw}' points outside the bundle ('..')")
    if any("\x00" in part for part in parts):
        raise ArtifactRejected(f"the archive member '{raw}' has a NUL byte in its name")
    # Beyond Linux's NAME_MAX, or deep enough to approach PATH_MAX once under the data
    # directory, unpacking fails with an OSError: refuse at upload instead.
    if any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        raise ArtifactRejected(f"the archive member '{raw}' has a name longer than {_MAX_NAME_BYTES} bytes")
    cleaned = "/".join(parts)
    if len(cleaned.encode()) > _MAX_PATH_BYTES:
        raise ArtifactRejected(f"the archive member '{raw[:80]}...' has a path longer than {_MAX_PATH_BYTES} bytes")
    return cleaned


# tarfile reads a GNU long name or a PAX record block whole, before any member check: a few
# hundred KB of gzip can hold a header of hundreds of MB. Real ones hold a path of at most
# _MAX_PATH_BYTES, or a handful of PAX keys (times, owners, extended attributes).
_MAX_LONG_NAME_BYTES = 4096
_MAX_PAX_BYTES = 8192
# Before one member: a global and a local PAX header, or a GNU long name and long link name.
# tarfile recurses once per extended header, so a long chain would also exhaust the stack.
_MAX_EXTENDED_HEADERS = 4
_LONG_NAME_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
# Per member, on top of its data: its header, padding and extended headers.
_TAR_BYTES_PER_MEMBER = 64 * 1024


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses, before tarfile reads it, an extended header above a few
    KiB, more than a few in a row, global PAX records beyond one block, and sparse files
    (whose maps tarfile reads from the member's data)."""

    def _proc_member(self, archive: _BoundedTarFile) -> tarfile.TarInfo:
        if self.type in _LONG_NAME_TYPES or self.type in _PAX_TYPES:
            limit = _MAX_LONG_NAME_BYTES if self.type in _LONG_NAME_TYPES else _MAX_PAX_BYTES
            if self.size > limit:
                raise ArtifactRejected(
                    f"the archive has a {'long-name' if self.type in _LONG_NAME_TYPES else 'PAX'} header of "
                    f"{self.size} bytes; at most {limit} are accepted"
                )
            archive.extended_in_a_row += 1
            if archive.extended_in_a_row > _MAX_EXTENDED_HEADERS:
                raise ArtifactRejected(
                    f"the archive has more than {_MAX_EXTENDED_HEADERS} long-name or PAX headers in a row"
                )
            if self.type == tarfile.XGLTYPE:
                archive.global_pax_bytes += self.size
                if archive.global_pax_bytes > _MAX_PAX_BYTES:
                    raise ArtifactRejected(f"the archive's global PAX headers exceed {_MAX_PAX_BYTES} bytes")
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise ArtifactRejected(f"the archive member '{self.name}' is a sparse file; bundles hold only files")
        else:
            archive.extended_in_a_row = 0
        # The documented hook for TarInfo subclasses; typeshed leaves it out.
        return super()._proc_member(archive)  # type: ignore[misc]

    def _refuse_sparse(self, next: tarfile.TarInfo, *args: object) -> None:
        raise ArtifactRejected(f"the archive member '{next.name}' is a sparse file; bundles hold only files")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _BoundedTarFile(tarfile.TarFile):
    tarinfo = _BoundedTarInfo
    extended_in_a_row = 0
    global_pax_bytes = 0


# A tar.gz is one gzip member (tar czf, pigz), a concatenation (cat a.gz b.gz) a few. Each
# member costs Python work whatever it holds: a 2 GiB upload of 20-byte empty members kept a
# web thread inspecting for minutes.
_MAX_GZIP_MEMBERS = 64


class _Gunzip:
    """gzip.open's decompressed stream, for tarfile's streaming reads, refusing more than
    _MAX_GZIP_MEMBERS members (zlib checks each member's header, CRC and length)."""

    def __init__(self, compressed: IO[bytes]) -> None:
        self.compressed = compressed
        self.members = 0
        self.decompressor: Any = None
        self.pending = b""

    def read(self, size: int) -> bytes:
        while size > 0:
            if self.decompressor is not None and self.decompressor.eof:
                self.pending = self.decompressor.unused_data + self.pending
                self.decompressor = None
            if not self.pending:
                self.pending = self.compressed.read(64 * 1024)
            if not self.pending:
                if self.decompressor is not None:
                    raise EOFError("the gzip stream ends before its last member does")
                break
            if self.decompressor is None:
                self.members += 1
                if self.members > _MAX_GZIP_MEMBERS:
                    raise ArtifactRejected(f"the .tar.gz bundle has more than {_MAX_GZIP_MEMBERS} gzip members")
                self.decompressor = zlib.decompressobj(wbits=31)
            # At most a MiB a call: a read of everything must not inflate a bomb's block at once.
            data = self.decompressor.decompress(self.pending, min(size, 1024 * 1024))
            self.pending = self.decompressor.unconsumed_tail
            if data:
                return bytes(data)
        return b""


class _Inflated:
    """A decompressed stream that refuses to give more than `limit` bytes in all: the bound on
    what reading a bundle may inflate, whatever the archive's headers claim."""

    def __init__(self, stream: _Gunzip, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.limit - self.total + 1 if size < 0 else size)
        self.total += len(data)
        if self.total > self.limit:
            raise ArtifactRejected(f"the bundle inflates to more than {self.limit} bytes (RDEPLOY_MAX_UNPACKED_BYTES)")
        return data


def _tar_members(path: Path, limits: BundleLimits) -> Iterator[tuple[Member, IO[bytes] | None]]:
    # Streaming mode ("r|"): one pass, no seeking, bounded memory.
    budget = limits.max_unpacked_bytes + (limits.max_members + 1) * _TAR_BYTES_PER_MEMBER
    try:
        with (
            path.open("rb") as compressed,
            # Streaming mode reads only fileobj.read(): _Inflated has no more.
            _BoundedTarFile.open(fileobj=_Inflated(_Gunzip(compressed), budget), mode="r|") as archive,  # type: ignore[call-overload]
        ):
            for info in archive:
                if info.issym() or info.islnk():
                    raise ArtifactRejected(f"the archive member '{info.name}' is a link; bundles hold only files")
                if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
                    raise ArtifactRejected(
                        f"the archive member '{info.name}' is a device or FIFO; bundles may hold only files"
                    )
                if not (info.isfile() or info.isdir()):
                    raise ArtifactRejected(f"the archive member '{info.name}' is not a regular file or directory")
                member = Member(_clean_name(info.name), info.size if info.isfile() else 0, info.isdir())
                yield member, archive.extractfile(info) if info.isfile() else None
    except (*CORRUPT_ERRORS, OSError) as exc:
        raise corrupt_bundle("tar.gz", exc) from exc


_ZIP_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
# zipfile reads the central directory whole and makes an object per entry before any member
# check. An entry is 46 bytes plus its name, extra fields and comment: 1 KiB a member is room
# for a long path and the usual extras (zip64 sizes, Unix times), not for padding.
_ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024
_MAX_ZIP_COMMENT = 4096


def _check_zip_directory(path: Path, limits: BundleLimits) -> None:
    """Refuses a zip whose end record announces more entries, a larger central directory or a
    longer comment than a bundle within `limits` needs, before zipfile reads any of it."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - _ZIP_END.size - 0xFFFF)
        handle.seek(start)
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _ZIP_END.size:
            raise ArtifactRejected("the .zip bundle is corrupt: it has no end of central directory record")
        _, _, _, _, entries, directory, _, comment = _ZIP_END.unpack_from(tail, at)
        # A zip64 end record and its locator just before, which zipfile believes over the end record.
        zip64_at = start + at - _ZIP64_LOCATOR.size - _ZIP64_END.size
        if zip64_at >= 0:
            handle.seek(zip64_at)
            record = handle.read(_ZIP64_END.size + _ZIP64_LOCATOR.size)
            if record.startswith(b"PK\x06\x06") and record[_ZIP64_END.size :].startswith(b"PK\x06\x07"):
                entries, directory = _ZIP64_END.unpack_from(record)[7:9]
    if comment > _MAX_ZIP_COMMENT:
        raise ArtifactRejected(
            f"the .zip bundle has a comment of {comment} bytes; at most {_MAX_ZIP_COMMENT} are accepted"
        )
    if entries > limits.max_members:
        raise ArtifactRejected(f"the bundle has more than {limits.max_members} members")
    if directory > limits.max_members * _ZIP_DIRECTORY_BYTES_PER_MEMBER:
        raise ArtifactRejected(
            f"the .zip bundle's central directory is {directory} bytes, more than {limits.max_members} members need"
        )


def _zip_members(path: Path, limits: BundleLimits) -> Iterator[tuple[Member, IO[bytes] | None]]:
    _check_zip_directory(path, limits)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ArtifactRejected(
                        f"the archive member '{info.filename}' is a link; bundles may hold only files"
                    )
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    raise ArtifactRejected(
                        f"the archive member '{info.filename}' is a device or FIFO; bundles hold only files"
                    )
                if info.flag_bits & 0x1:
                    raise ArtifactRejected(f"the archive member '{info.filename}' is encrypted")
                member = Member(_clean_name(info.filename), 0 if info.is_dir() else info.file_size, info.is_dir())
                if member.is_dir:
                    yield member, None
                else:
                    with archive.open(info) as stream:
                        yield member, stream
    except (*CORRUPT_ERRORS, OSError, NotImplementedError) as exc:
        raise corrupt_bundle("zip", exc) from exc


def checked_members(path: Path, kind: str, limits: BundleLimits) -> Iterator[tuple[Member, IO[bytes] | None]]:
    """Every member, checked for shape and against the limits before it is yielded."""
    walker = _tar_members(path, limits) if kind == "tar.gz" else _zip_members(path, limits)
    total = 0
    files: set[str] = set()
    folders: set[str] = set()
    for count, (member, stream) in enumerate(walker, start=1):
        if count > limits.max_members:
            raise ArtifactRejected(f"the bundle has more than {limits.max_members} members")
        total += member.size
        if total > limits.max_unpacked_bytes:
            raise ArtifactRejected(
                f"the bundle unpacks to more than {limits.max_unpacked_bytes} bytes (RDEPLOY_MAX_UNPACKED_BYTES)"
            )
        if member.name:
            _check_layout(member, files, folders)
        yield member, stream


def _check_layout(member: Member, files: set[str], folders: set[str]) -> None:
    """Every path is either a file or a folder, once: `a` next to `a/b` cannot be unpacked
    (nor can model.rds next to model.rds/x). Records the member in `files`/`folders`."""
    parents = [member.name.rsplit("/", depth)[0] for depth in range(1, member.name.count("/") + 1)]
    for parent in parents:
        if parent in files:
            raise ArtifactRejected(f"the bundle holds '{parent}' both as a file and as a folder ('{member.name}')")
    if member.is_dir:
        if member.name in files:
            raise ArtifactRejected(f"the bundle holds '{member.name}' both as a file and as a folder")
        folders.add(member.name)
    else:
        if member.name in files:
            raise ArtifactRejected(f"the bundle holds '{member.name}' twice")
        if member.name in folders:
            raise ArtifactRejected(f"the bundle holds '{member.name}' both as a file and as a folder")
        files.add(member.name)
    folders.update(parents)
