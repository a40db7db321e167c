"""Receiving uploads: the upload doors' handler (hashed while streamed to a temporary file,
within RDEPLOY_MAX_UPLOAD_BYTES), every other form's handler (no file stored), and a local
path for an upload's bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, TemporaryFileUploadHandler
from django.http import HttpRequest

from deployer.artifacts import CHUNK_SIZE, ArtifactRejected, ArtifactTooLarge

# Around the files of an upload form: its text fields (a name, a package list, a CSRF token)
# and the multipart framing.
_FORM_BYTES = 64 * 1024


class _LengthCheckedHandler(FileUploadHandler):
    """An upload handler that refuses a body by its Content-Length, before reading any of it."""

    def refuse_length(self, content_length: int) -> None:
        """Raises when a body of `content_length` bytes cannot be one this handler takes."""
        raise NotImplementedError

    def handle_raw_input(
        self,
        input_data: IO[bytes],
        META: dict[str, str],
        content_length: int,
        boundary: str,
        encoding: str | None = None,
    ) -> None:
        self.refuse_length(content_length)


class HashingUploadHandler(_LengthCheckedHandler, TemporaryFileUploadHandler):
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

    def refuse_length(self, content_length: int) -> None:
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


class NoFilesUploadHandler(_LengthCheckedHandler):
    """Every other request's upload handler (settings.FILE_UPLOAD_HANDLERS): no other form
    takes a file. Django's default handlers wrote a file of any size to FILE_UPLOAD_TEMP_DIR
    for any multipart POST that reached request.POST, the anonymous sign-in page's included
    (CSRF reads it), outside RDEPLOY_MAX_UPLOAD_BYTES. Here a multipart body above
    DATA_UPLOAD_MAX_MEMORY_SIZE plus the form's framing is a 400 before it is read, and a
    file field is skipped, never stored."""

    def refuse_length(self, content_length: int) -> None:
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
