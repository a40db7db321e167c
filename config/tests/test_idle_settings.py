"""The idle stop's installation defaults are read strictly: a bad value stops the process
at start-up naming the variable (issue 14, docs/pipeline.md)."""

from pathlib import Path

from config.tests.test_settings import _load_settings


def test_a_bad_idle_stop_default_stops_the_process_naming_the_variable(tmp_path: Path) -> None:
    result = _load_settings(
        DJANGO_DEBUG="1", RDEPLOY_DATA_DIR=str(tmp_path), RDEPLOY_IDLE_STOP_AFTER_SAGEMAKER="3 days"
    )
    assert result.returncode != 0
    assert "RDEPLOY_IDLE_STOP_AFTER_SAGEMAKER: 'idle_stop_after' must be" in result.stderr


def test_a_good_idle_stop_default_loads(tmp_path: Path) -> None:
    result = _load_settings(DJANGO_DEBUG="1", RDEPLOY_DATA_DIR=str(tmp_path), RDEPLOY_IDLE_STOP_AFTER_LOCAL="2d")
    assert result.returncode == 0, result.stderr
