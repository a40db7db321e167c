"""Uploaded model files: recognised by content, hashed while received, checked before
anything unpacks them, and unpacked only into the runtime's model-directory layout.

Nothing here deserializes R data: an `.rds` is only sniffed by its header bytes. R reads
it later, in a container (deployer/integrations/containers/sandbox.py).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, TemporaryFileUploadHandler
from django.http import HttpRequest

from deployer.errors import DomainError

CHUNK_SIZE = 1024 * 1024
MODEL_FILE = "model.rds"


class ArtifactRejected(DomainError, ValueError):
    """An upload rdeploy refuses; the message says what is wrong (HTTP 400), ``field`` which
    input it is about (None: the file itself)."""


class ArtifactTooLarge(ArtifactRejected):
    """An upload above RDEPLOY_MAX_UPLOAD_BYTES (HTTP 413)."""

    kind = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the upload is larger than the upload limit of {limit} bytes "
            "(RDEPLOY_MAX_UPLOAD_BYTES, for the model and the sample together)",
            field="file",
        )
        self.limit = limit


# ---- Format sniffing --------------------------------------------------------------------


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


# ---- Receiving uploads ------------------------------------------------------------------


# Around the files of an upload form: its text fields (a name, a package list, a CSRF token)
# and the multipart framing.
_FORM_BYTES = 64 * 1024


class HashingUploadHandler(TemporaryFileUploadHandler):
    """The one upload handler of both upload doors (REST and dashboard), one per request.
    Streams each file to a temporary file, computing its SHA-256 on the way, and keeps a
    request within RDEPLOY_MAX_UPLOAD_BYTES for all its files together: a Content-Length that
    cannot fit is refused before any byte is read, and receiving stops as soon as the files
    pass the limit. Only the file fields in `fields` are received, each once."""

    def __init__(self, request: HttpRequest, *, fields: Collection[str]) -> None:
        super().__init__(request)
        self.fields = fields
        self.seen: set[str] = set()
        self.received = 0

    def handle_raw_input(
        self,
        input_data: IO[bytes],
        META: dict[str, str],
        content_length: int,
        boundary: str,
        encoding: str | None = None,
    ) -> None:
        if content_length > settings.MAX_UPLOAD_BYTES + _FORM_BYTES:
            raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)

    def new_file(self, field_name: str, *args: Any, **kwargs: Any) -> None:
        if field_name not in self.fields:
            raise ArtifactRejected(
                f"the upload has an unexpected file field '{field_name[:64]}' (expected: {', '.join(self.fields)})"
            )
        if field_name in self.seen:
            raise ArtifactRejected(f"the upload sends the file field '{field_name}' more than once", field=field_name)
        self.seen.add(field_name)
        super().new_file(field_name, *args, **kwargs)
        self.digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > settings.MAX_UPLOAD_BYTES:
            self.file.close()
            raise ArtifactTooLarge(settings.MAX_UPLOAD_BYTES)
        self.digest.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size: int) -> UploadedFile | None:
        uploaded = super().file_complete(file_size)
        if uploaded is not None:
            uploaded.sha256 = self.digest.hexdigest()  # type: ignore[attr-defined]
        return uploaded


class NoFilesUploadHandler(FileUploadHandler):
    """Every other request's upload handler (settings.FILE_UPLOAD_HANDLERS): no other form
    takes a file. Django's default handlers wrote a file of any size to FILE_UPLOAD_TEMP_DIR
    for any multipart POST that reached request.POST, the anonymous sign-in page's included
    (CSRF reads it), outside RDEPLOY_MAX_UPLOAD_BYTES. Here a multipart body above
    DATA_UPLOAD_MAX_MEMORY_SIZE plus the form's framing is a 400 before it is read, and a
    file field is skipped, never stored."""

    def handle_raw_input(
        self,
        input_data: IO[bytes],
        META: dict[str, str],
        content_length: int,
        boundary: str,
        encoding: str | None = None,
    ) -> None:
        if content_length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE + _FORM_BYTES:
            raise RequestDataTooBig("The request body exceeds DATA_UPLOAD_MAX_MEMORY_SIZE; this form takes no file.")

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        raise SkipFile

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        return None


def uploaded_sha256(upload: UploadedFile) -> str:
    """The SHA-256 of an upload: from HashingUploadHandler when it received the file, else
    computed here (uploads that came through other handlers)."""
    known = getattr(upload, "sha256", None)
    if known:
        return str(known)
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks(CHUNK_SIZE):
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


@contextmanager
def local_copy(upload: UploadedFile) -> Iterator[Path]:
    """A path on local disk holding the upload's bytes (zip needs random access)."""
    temporary_path = getattr(upload, "temporary_file_path", None)
    if temporary_path is not None:
        yield Path(temporary_path())
        return
    scratch = Path(settings.FILE_UPLOAD_TEMP_DIR) / f"upload-{os.getpid()}-{id(upload)}"
    try:
        with scratch.open("wb") as out:
            upload.seek(0)
            for chunk in upload.chunks(CHUNK_SIZE):
                out.write(chunk)
        upload.seek(0)
        yield scratch
    finally:
        scratch.unlink(missing_ok=True)


# ---- Bundles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleLimits:
    max_members: int
    max_unpacked_bytes: int

    @classmethod
    def from_settings(cls) -> BundleLimits:
        return cls(settings.MAX_BUNDLE_MEMBERS, settings.MAX_UNPACKED_BYTES)


@dataclass(frozen=True)
class BundleListing:
    files: tuple[str, ...]  # paths in the model directory (after removing a wrapping folder)
    unpacked_bytes: int
    prefix: str  # a single wrapping folder ("mymodel/") that unpacking removes, or ""
    rds: RdsHeader | None


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    is_dir: bool


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


class _Inflated:
    """A decompressed stream that refuses to give more than `limit` bytes in all: the bound on
    what reading a bundle may inflate, whatever the archive's headers claim."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.limit - self.total + 1 if size < 0 else size)
        self.total += len(data)
        if self.total > self.limit:
            raise ArtifactRejected(f"the bundle inflates to more than {self.limit} bytes (RDEPLOY_MAX_UNPACKED_BYTES)")
        return data


def _tar_members(path: Path, limits: BundleLimits) -> Iterator[tuple[_Member, IO[bytes] | None]]:
    # Streaming mode ("r|"): one pass, no seeking, bounded memory.
    budget = limits.max_unpacked_bytes + (limits.max_members + 1) * _TAR_BYTES_PER_MEMBER
    try:
        with (
            gzip.open(path, "rb") as inflating,
            # Streaming mode reads only fileobj.read(): _Inflated has no more.
            _BoundedTarFile.open(fileobj=_Inflated(inflating, budget), mode="r|") as archive,  # type: ignore[call-overload]
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
                member = _Member(_clean_name(info.name), info.size if info.isfile() else 0, info.isdir())
                yield member, archive.extractfile(info) if info.isfile() else None
    except (*_CORRUPT, OSError) as exc:
        raise _corrupt("tar.gz", exc) from exc


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


def _zip_members(path: Path, limits: BundleLimits) -> Iterator[tuple[_Member, IO[bytes] | None]]:
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
                member = _Member(_clean_name(info.filename), 0 if info.is_dir() else info.file_size, info.is_dir())
                if member.is_dir:
                    yield member, None
                else:
                    with archive.open(info) as stream:
                        yield member, stream
    except (*_CORRUPT, OSError, NotImplementedError) as exc:
        raise _corrupt("zip", exc) from exc


def _members(path: Path, kind: str, limits: BundleLimits) -> Iterator[tuple[_Member, IO[bytes] | None]]:
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


def _check_layout(member: _Member, files: set[str], folders: set[str]) -> None:
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


def _wrapping_prefix(files: list[str]) -> str:
    """A single folder wrapping the whole bundle (`tar czf m.tar.gz mymodel/`), or ""."""
    if MODEL_FILE in files:
        return ""
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1:
        prefix = f"{tops.pop()}/"
        if f"{prefix}{MODEL_FILE}" in files:
            return prefix
    return ""


_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def _corrupt(kind: str, exc: Exception) -> ArtifactRejected:
    return ArtifactRejected(f"the .{kind} bundle is corrupt: {exc}")


def inspect_bundle(path: Path, kind: str, limits: BundleLimits | None = None) -> BundleListing:
    """Checks a bundle without unpacking it; ArtifactRejected says what is wrong."""
    limits = limits or BundleLimits.from_settings()
    files: list[str] = []
    sniffed: dict[str, Sniffed | ArtifactRejected] = {}
    total = 0
    try:
        for member, stream in _members(path, kind, limits):
            if member.is_dir or not member.name:
                continue
            files.append(member.name)
            total += member.size
            if posixpath.basename(member.name) == MODEL_FILE and stream is not None:
                try:
                    sniffed[member.name] = sniff_stream(stream)
                except ArtifactRejected as exc:
                    sniffed[member.name] = exc
    except _CORRUPT as exc:
        raise _corrupt(kind, exc) from exc
    prefix = _wrapping_prefix(files)
    if f"{prefix}{MODEL_FILE}" not in files:
        raise ArtifactRejected(
            "the bundle has no model.rds at its top level: save the model with saveRDS(model, 'model.rds') "
            "and put it next to predict.R"
        )
    model = sniffed[f"{prefix}{MODEL_FILE}"]
    if isinstance(model, ArtifactRejected):
        raise ArtifactRejected(f"model.rds in the bundle: {model}")
    if model.kind != "rds":
        raise ArtifactRejected("model.rds in the bundle is not an R serialization written by saveRDS()")
    stripped = tuple(name[len(prefix) :] for name in files if name.startswith(prefix))
    return BundleListing(files=stripped, unpacked_bytes=total, prefix=prefix, rds=model.rds)


def extract_bundle(path: Path, kind: str, destination: Path, limits: BundleLimits | None = None) -> BundleListing:
    """Unpacks a checked bundle into `destination` as the runtime's model directory:
    regular files only, modes 0644/0755, nothing outside `destination`."""
    limits = limits or BundleLimits.from_settings()
    listing = inspect_bundle(path, kind, limits)
    root = destination.resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        for member, stream in _members(path, kind, limits):
            relative = member.name[len(listing.prefix) :] if member.name.startswith(listing.prefix) else ""
            if not relative:
                continue
            target = (root / relative).resolve()
            if root not in target.parents:
                raise ArtifactRejected(f"the archive member '{member.name}' points outside the bundle")
            if member.is_dir:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            assert stream is not None
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            _copy_limited(stream, target, member.size)
    except _CORRUPT as exc:
        raise _corrupt(kind, exc) from exc
    return listing


def _copy_limited(stream: IO[bytes], target: Path, declared: int) -> None:
    """Copies at most the declared size: a member that inflates beyond it is corrupt."""
    written = 0
    with target.open("xb") as out:
        while chunk := stream.read(CHUNK_SIZE):
            written += len(chunk)
            if written > declared:
                raise ArtifactRejected(f"the archive member '{target.name}' is larger than its header says")
            out.write(chunk)
    target.chmod(0o644)


def copy_stream(source: IO[bytes], target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK_SIZE)
    target.chmod(0o644)
