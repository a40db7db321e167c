"""Holes a red-team pass over issue 12's fixes found, each pinned by a test that fails without
its fix."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def stored_uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the temporary files Django's upload handling creates in the test."""
    created: list[str] = []
    original = TemporaryUploadedFile.__init__

    def recording(self: TemporaryUploadedFile, name: str, *args: Any, **kwargs: Any) -> None:
        created.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(TemporaryUploadedFile, "__init__", recording)
    return created


def test_a_form_without_files_stores_none(stored_uploads: list[str]) -> None:
    """The anonymous sign-in page (any form but the two upload doors) stores no file sent to it:
    Django's default handlers wrote it to FILE_UPLOAD_TEMP_DIR, whatever its size."""
    big = SimpleUploadedFile("filler.bin", b"\0" * (3 * 1024 * 1024))
    response = Client().post(LOGIN, {"username": "someone", "password": "wrong", "filler": big})
    assert stored_uploads == []
    assert response.status_code != 500


def test_a_form_body_above_the_field_limit_is_refused_unread(settings: Any, stored_uploads: list[str]) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    big = SimpleUploadedFile("filler.bin", b"\0" * (512 * 1024))
    response = Client().post(LOGIN, {"username": "someone", "password": "wrong", "filler": big})
    assert response.status_code == 400
    assert stored_uploads == []
