from pathlib import Path

from django.conf import settings
from django.test import override_settings

from deployer.integrations import isolation


def tmpfs_targets(script: str) -> list[str]:
    return [line.rsplit(" ", 1)[1] for line in script.splitlines() if line.startswith("mount -t tmpfs")]


def test_a_data_dir_inside_the_installation_is_hidden_with_it_not_mounted_over_twice() -> None:
    # The quick start's default: ./var inside the checkout. Mounting a tmpfs on ./var after
    # hiding the checkout fails ("mount point does not exist") and kills every sandbox.
    nested = Path(settings.BASE_DIR) / "var"
    nested.mkdir(exist_ok=True)
    with override_settings(DATA_DIR=nested):
        script = isolation.mount_script(binds=[])
    assert tmpfs_targets(script) == [str(Path(settings.BASE_DIR).resolve())]


def test_data_dir_and_installation_side_by_side_are_both_hidden(tmp_path: Path) -> None:
    with override_settings(DATA_DIR=tmp_path):
        script = isolation.mount_script(binds=[])
    assert sorted(tmpfs_targets(script)) == sorted([str(tmp_path.resolve()), str(Path(settings.BASE_DIR).resolve())])


def test_a_secret_file_outside_the_hidden_directories_is_masked(tmp_path: Path, monkeypatch) -> None:
    secret = tmp_path / "secret_key"
    secret.write_text("s3cret")
    monkeypatch.setenv("DJANGO_SECRET_KEY_FILE", str(secret))
    with override_settings(DATA_DIR=Path(settings.BASE_DIR) / "var"):
        script = isolation.mount_script(binds=[])
    assert f"mount --bind /dev/null {secret}" in script
