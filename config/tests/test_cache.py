"""The Django cache stores signed JSON, never pickle (issue 12, finding 8; config/cache.py):
a pickle planted in Redis by whoever holds its password is not run by the web process, and
a value rdeploy did not sign is not believed."""

import json
import pickle
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.test import override_settings

from deployer.health import ENGINE_REPORT_KEY, system_health


class CreatesAFile:
    """Unpickling this opens (creates) a file: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def plant(key: str, payload: bytes) -> None:
    redis.Redis.from_url(settings.REDIS_URL).set(cache.make_and_validate_key(key), payload)


def test_a_planted_pickle_is_not_run_and_reads_as_a_miss(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plant("planted", pickle.dumps(CreatesAFile(marker)))
    assert cache.get("planted") is None
    assert cache.get_many(["planted"]) == {"planted": None}
    assert not marker.exists()


@pytest.mark.django_db
def test_a_planted_engine_report_reads_as_no_report(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plant(ENGINE_REPORT_KEY, pickle.dumps({"ok": True, "hook": CreatesAFile(marker)}))
    engine = system_health()["container_engine"]
    assert engine["ok"] is False
    assert "no worker reported on the container engine" in engine["error"]
    assert not marker.exists()


def test_what_rdeploy_caches_comes_back_as_it_went_in() -> None:
    values = {
        "report": {"ok": False, "checked_at": 1.5, "error": "no base image"},
        "html": "<svg>chart</svg>",
        "digits": "123",
        "flag": True,
        "lock": 1_800_000_000,
    }
    cache.set_many(values, timeout=30)
    assert cache.get_many(list(values)) == values
    assert cache.add("counter", 0, timeout=30)
    assert cache.incr("counter") == 1
    assert cache.incr("counter", 2) == 3
    assert cache.get("counter") == 3
    cache.delete_many([*values, "counter"])


def test_values_json_cannot_hold_are_refused_when_stored() -> None:
    with pytest.raises(TypeError):
        cache.set("object", object(), timeout=30)
    with pytest.raises(ValueError, match="not JSON compliant"):
        cache.set("nan", float("nan"), timeout=30)


@pytest.mark.django_db
def test_planted_json_without_the_installations_signature_reads_as_a_miss() -> None:
    # Redis write access is not enough to make the web process trust a value: a well-formed
    # report that says the engine is fine, planted as plain JSON, is not believed.
    plant(ENGINE_REPORT_KEY, json.dumps({"ok": True, "checked_at": 1.0}).encode())
    engine = system_health()["container_engine"]
    assert engine["ok"] is False
    assert "no worker reported on the container engine" in engine["error"]


def test_a_value_signed_with_another_secret_key_reads_as_a_miss() -> None:
    with override_settings(SECRET_KEY="another installation's key " + "x" * 40):
        cache.set("foreign", "<script>alert(1)</script>", timeout=30)
    assert cache.get("foreign") is None
    cache.set("own", "<svg>chart</svg>", timeout=30)
    assert cache.get("own") == "<svg>chart</svg>"
    cache.delete_many(["foreign", "own"])


def test_values_signed_before_a_key_rotation_still_read() -> None:
    old_key = "the key before rotation " + "y" * 40
    with override_settings(SECRET_KEY=old_key):
        cache.set("rotated", {"kept": True}, timeout=30)
    with override_settings(SECRET_KEY="the key after rotation " + "z" * 40, SECRET_KEY_FALLBACKS=[old_key]):
        assert cache.get("rotated") == {"kept": True}
    cache.delete("rotated")
