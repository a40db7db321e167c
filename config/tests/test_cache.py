"""The Django cache stores JSON, never pickle (issue 12, finding 8; config/cache.py): a
pickle planted in Redis by whoever holds its password is not run by the web process."""

import pickle
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.cache import cache

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
