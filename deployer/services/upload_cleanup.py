"""Upload temp files nobody will delete: those of a web process killed mid-upload.

An upload streams to a file in FILE_UPLOAD_TEMP_DIR (Django's ``tmp*.upload*``, or the
``upload-<pid>-<id>`` scratch copy of ``artifacts.uploads.local_copy``), which the request deletes
when it ends, however it ends, unless its process dies first (SIGKILL, OOM killer, a lost
node). Celery beat runs ``upload_temp_files_remove_stale`` every
RDEPLOY_UPLOAD_TEMP_CLEAN_SECONDS: a file not written for RDEPLOY_UPLOAD_TEMP_MAX_AGE
seconds belongs to no live request (one still receiving writes every chunk; one that has
received everything finishes within the web server's request time), so it is removed. By
age rather than at web start: several web processes, on several hosts, share the directory
(compose mounts the data directory into each), and one starting must not delete another's
upload in progress.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

# What the upload code writes there, and nothing else a stray process may have put there.
UPLOAD_TEMP_NAME = re.compile(r"tmp\w+\.upload(\.[\w.]+)?|upload-\d+-\d+")


def upload_temp_files_remove_stale(*, max_age_seconds: float | None = None) -> list[str]:
    """Remove upload temp files not written for ``max_age_seconds`` (by default
    settings.UPLOAD_TEMP_MAX_AGE_SECONDS); the names removed."""
    max_age = settings.UPLOAD_TEMP_MAX_AGE_SECONDS if max_age_seconds is None else max_age_seconds
    cutoff = time.time() - max_age
    directory = Path(settings.FILE_UPLOAD_TEMP_DIR)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not UPLOAD_TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(status.st_mode) or status.st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # its request finished meanwhile
        removed.append(entry.name)
        logger.warning("removed %s, an upload temp file not written for %s s", entry.path, max_age)
    return removed
