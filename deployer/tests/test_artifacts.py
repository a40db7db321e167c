import errno
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.artifacts import ArtifactRejected, bundles, sniffing
from deployer.artifacts.archives import BundleLimits
from deployer.model_files import model_version_materialize
from deployer.models import ModelVersion
from deployer.services.model_inspection import model_version_inspect
from deployer.tests.intake_support import tar_gz, zip_bytes
from testsupport.factories import make_model_version

LIMITS = BundleLimits(max_members=20, max_unpacked_bytes=10_000_000)


@pytest.fixture(scope="session")
def r_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small object saved by R in every format an upload may use, plus a save() workspace."""
    out = tmp_path_factory.mktemp("r-files")
    script = f"""
    m <- lm(mpg ~ wt, data = mtcars)
    d <- "{out}"
    saveRDS(m, file.path(d, "gzip.rds"))
    saveRDS(m, file.path(d, "bzip2.rds"), compress = "bzip2")
    saveRDS(m, file.path(d, "xz.rds"), compress = "xz")
    saveRDS(m, file.path(d, "plain.rds"), compress = FALSE)
    saveRDS(m, file.path(d, "ascii.rds"), ascii = TRUE, compress = FALSE)
    saveRDS(m, file.path(d, "v2.rds"), version = 2)
    save(m, file = file.path(d, "workspace.RData"))
    big <- list(m, rnorm(3e5))
    for (z in c("gzip", "bzip2", "xz")) saveRDS(big, file.path(d, paste0("big-", z, ".rds")), compress = z)
    """
    subprocess.run([settings.RSCRIPT, "--vanilla", "-e", script], check=True, capture_output=True)
    return out


@pytest.mark.parametrize(
    ("file_name", "compression", "fmt", "version"),
    [
        ("gzip.rds", "gzip", "xdr", 3),
        ("bzip2.rds", "bzip2", "xdr", 3),
        ("xz.rds", "xz", "xdr", 3),
        ("plain.rds", "none", "xdr", 3),
        ("ascii.rds", "none", "ascii", 3),
        ("v2.rds", "gzip", "xdr", 2),
    ],
)
def test_rds_files_are_recognised_by_content_with_the_writer_r_version(
    r_files: Path, file_name: str, compression: str, fmt: str, version: int
) -> None:
    r_version = subprocess.run(
        [settings.RSCRIPT, "-e", "cat(paste(R.version$major, R.version$minor, sep = '.'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    sniffed = sniffing.sniff_file(r_files / file_name)

    assert sniffed.kind == "rds"
    assert sniffed.rds is not None
    assert (sniffed.rds.compression, sniffed.rds.format, sniffed.rds.serialization_version) == (
        compression,
        fmt,
        version,
    )
    assert sniffed.rds.writer_r_version == r_version


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_large_compressed_rds_files_are_recognised_whatever_their_block_size(r_files: Path, compression: str) -> None:
    path = r_files / f"big-{compression}.rds"
    assert path.stat().st_size > 1024 * 1024

    sniffed = sniffing.sniff_file(path)

    assert (sniffed.kind, sniffed.rds.compression if sniffed.rds else None) == ("rds", compression)


def test_a_bundle_holding_a_large_bzip2_model_is_accepted(r_files: Path, tmp_path: Path) -> None:
    bundle = tar_gz({"model.rds": (r_files / "big-bzip2.rds").read_bytes()})

    listing = bundles.inspect_bundle(_bundle_file(tmp_path, bundle), "tar.gz", LIMITS)

    assert listing.rds is not None
    assert listing.rds.compression == "bzip2"


def test_an_rdata_workspace_is_refused_with_advice_to_use_saverds(r_files: Path) -> None:
    with pytest.raises(ArtifactRejected, match=r"save\(\).*saveRDS\(model, 'model.rds'\)"):
        sniffing.sniff_file(r_files / "workspace.RData")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not a model", b"\x1f\x8b\x08\x00garbage", b"%PDF-1.4 whatever", b"BZh9 not really"],
)
def test_content_that_is_not_a_model_is_refused_as_unrecognised_or_corrupt(content: bytes) -> None:
    with pytest.raises(ArtifactRejected, match=r"unrecognised file format|corrupt"):
        sniffing.sniff(content)


def test_tar_gz_and_zip_bundles_are_recognised_by_content(r_files: Path) -> None:
    model = (r_files / "gzip.rds").read_bytes()

    assert sniffing.sniff(tar_gz({"model.rds": model})).kind == "tar.gz"
    assert sniffing.sniff(zip_bytes({"model.rds": model})).kind == "zip"


def _bundle_file(tmp_path: Path, data: bytes, name: str = "bundle") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_bundle_lists_its_files_and_the_writer_version_of_its_model(r_files: Path, tmp_path: Path) -> None:
    model = (r_files / "xz.rds").read_bytes()
    bundle = tar_gz(
        {"model.rds": model, "predict.R": b"predict_fn <- function(m, d) 1\n", "extra/lookup.csv": b"a\n1\n"}
    )

    listing = bundles.inspect_bundle(_bundle_file(tmp_path, bundle), "tar.gz", LIMITS)

    assert sorted(listing.files) == ["extra/lookup.csv", "model.rds", "predict.R"]
    assert listing.rds is not None
    assert listing.rds.compression == "xz"


def test_a_bundle_wrapped_in_one_folder_unpacks_to_the_model_directory_layout(r_files: Path, tmp_path: Path) -> None:
    model = (r_files / "gzip.rds").read_bytes()
    bundle = zip_bytes({"mymodel/model.rds": model, "mymodel/predict.R": b"# hooks\n"})

    listing = bundles.extract_bundle(_bundle_file(tmp_path, bundle), "zip", tmp_path / "out", LIMITS)

    assert listing.prefix == "mymodel/"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.rds", "predict.R"]
    assert (tmp_path / "out" / "model.rds").read_bytes() == model


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: tar_gz({"predict.R": b"1\n"}), "no model.rds"),
        (lambda m: tar_gz({"/etc/model.rds": m}), "absolute path"),
        (lambda m: tar_gz({"model.rds": m, "../../evil.R": b"x"}), r"outside the bundle \('..'\)"),
        (lambda m: tar_gz({"model.rds": m}, extra=[_link("predict.R", "/etc/passwd", tarfile.SYMTYPE)]), "is a link"),
        (lambda m: tar_gz({"model.rds": m}, extra=[_link("hard.R", "model.rds", tarfile.LNKTYPE)]), "is a link"),
        (lambda m: tar_gz({"model.rds": m}, extra=[_device("null")]), "device or FIFO"),
        (lambda m: tar_gz({"model.rds": m, **{f"f{i}.txt": b"x" for i in range(30)}}), "more than 20 members"),
        (lambda m: tar_gz({"model.rds": m, "zeros.bin": bytes(20_000_000)}), "unpacks to more than 10000000 bytes"),
        (lambda m: tar_gz({"model.rds": b"not an rds at all"}), "model.rds in the bundle"),
        (lambda m: tar_gz({"model.rds": m})[:-200], "corrupt"),
        (lambda m: zip_bytes({"model.rds": m, "../evil.R": b"x"}), "outside the bundle"),
        (lambda m: zip_bytes({"model.rds": m, "link": b"/etc/passwd"}, modes={"link": 0o120777}), "is a link"),
        (lambda m: zip_bytes({"model.rds": m, "zeros.bin": bytes(20_000_000)}), "unpacks to more than"),
        (lambda m: zip_bytes({"model.rds": m})[:-30], "corrupt"),
        (lambda m: zip_bytes({"C:/model.rds": m}), "absolute path"),
    ],
)
def test_hostile_or_broken_bundles_are_refused_with_what_is_wrong(
    r_files: Path, tmp_path: Path, build: object, message: str
) -> None:
    data = build((r_files / "gzip.rds").read_bytes())  # type: ignore[operator]
    kind = "zip" if data.startswith(b"PK") else "tar.gz"

    with pytest.raises(ArtifactRejected, match=message):
        bundles.extract_bundle(_bundle_file(tmp_path, data), kind, tmp_path / "out", LIMITS)

    assert not any((tmp_path / "out").rglob("evil.R")) if (tmp_path / "out").exists() else True
    assert not (tmp_path.parent / "evil.R").exists()


@pytest.mark.django_db
def test_materialize_writes_model_rds_and_rdeploy_json_for_a_bare_rds(
    owner: User, r_files: Path, tmp_path: Path
) -> None:
    model = (r_files / "gzip.rds").read_bytes()
    config = {"format_version": 1, "packages": [], "schema": {"columns": [{"name": "wt", "type": "numeric"}]}}
    version = make_model_version(owner, "cars", content=model, inspection={"rdeploy_json": config})

    directory = model_version_materialize(model_version=version, destination=tmp_path / "model")

    assert (directory / "model.rds").read_bytes() == model
    assert json.loads((directory / "rdeploy.json").read_text()) == config


@pytest.mark.django_db
def test_materialize_unpacks_a_bundle_and_can_run_again(owner: User, r_files: Path, tmp_path: Path) -> None:
    model = (r_files / "gzip.rds").read_bytes()
    bundle = zip_bytes({"model.rds": model, "predict.R": b"# hooks\n", "lookup/table.csv": b"a\n1\n"})
    version = make_model_version(owner, "cars", content=bundle)
    version.artifact_kind = ModelVersion.ArtifactKind.ZIP
    version.save()

    model_version_materialize(model_version=version, destination=tmp_path / "model")
    directory = model_version_materialize(model_version=version, destination=tmp_path / "model")

    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) == [
        "lookup/table.csv",
        "model.rds",
        "predict.R",
    ]
    assert not (directory / "rdeploy.json").exists()
    assert not list(tmp_path.glob(".bundle-*"))


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz"])
def test_tar_bundles_compressed_otherwise_than_gzip_are_refused_with_what_to_use(mode: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        info = tarfile.TarInfo("model.rds")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))

    with pytest.raises(ArtifactRejected, match=r"use \.tar\.gz or \.zip"):
        sniffing.sniff(buffer.getvalue()[:4096])


@pytest.mark.parametrize(
    "build",
    [
        lambda m: tar_gz({"model.rds": m, "a": b"file", "a/b": b"inside"}),
        lambda m: tar_gz({"model.rds": m, "a/b/c": b"inside", "a/b": b"file"}),
        lambda m: tar_gz({"model.rds": m, "model.rds/x": b"inside"}),
        lambda m: zip_bytes({"model.rds": m, "a": b"file", "a/b": b"inside"}),
        lambda m: zip_bytes({"model.rds": m, "a/": b"", "a": b"file"}),
        lambda m: zip_bytes({"wrap/model.rds": m, "wrap/lib/x.R": b"1", "wrap/lib": b"file"}),
    ],
    ids=[
        "tar-file-first",
        "tar-folder-first",
        "tar-inside-model-rds",
        "zip-file-first",
        "zip-folder-entry",
        "zip-wrapped",
    ],
)
def test_a_bundle_holding_one_path_as_both_a_file_and_a_folder_is_refused_at_upload(
    r_files: Path, tmp_path: Path, build: object
) -> None:
    data = build((r_files / "gzip.rds").read_bytes())  # type: ignore[operator]
    kind = "zip" if data.startswith(b"PK") else "tar.gz"

    with pytest.raises(ArtifactRejected, match="both as a file and as a folder"):
        bundles.inspect_bundle(_bundle_file(tmp_path, data), kind, LIMITS)


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 256, "longer than 255 bytes"), ("/".join(["d" * 200] * 6) + "/f", "longer than 1024 bytes")],
    ids=["component", "path"],
)
def test_a_bundle_member_name_too_long_to_unpack_is_refused_at_upload(
    r_files: Path, tmp_path: Path, name: str, message: str
) -> None:
    data = tar_gz({"model.rds": (r_files / "gzip.rds").read_bytes(), name: b"x"})

    with pytest.raises(ArtifactRejected, match=message):
        bundles.inspect_bundle(_bundle_file(tmp_path, data), "tar.gz", LIMITS)


def _stored_bundle(owner: User, content: bytes) -> ModelVersion:
    version = make_model_version(owner, "clash", content=content, status=ModelVersion.Status.INSPECTING)
    version.artifact_kind = ModelVersion.ArtifactKind.TAR_GZ
    version.save()
    return version


@pytest.mark.django_db
def test_a_stored_bundle_with_a_file_folder_clash_ends_invalid_instead_of_inspecting_forever(
    owner: User, r_files: Path
) -> None:
    bundle = tar_gz({"model.rds": (r_files / "gzip.rds").read_bytes(), "a": b"file", "a/b": b"inside"})
    version = _stored_bundle(owner, bundle)

    version = model_version_inspect(model_version=version)

    assert version.status == ModelVersion.Status.INVALID
    assert "'a' both as a file and as a folder" in version.status_reason


@pytest.mark.django_db
def test_an_os_error_while_unpacking_ends_the_inspection_invalid_saying_so(
    owner: User, r_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _stored_bundle(owner, tar_gz({"model.rds": (r_files / "gzip.rds").read_bytes()}))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundles, "extract_bundle", disk_full)

    version = model_version_inspect(model_version=version)

    assert version.status == ModelVersion.Status.INVALID
    assert "could not be unpacked" in version.status_reason
    assert "No space left on device" in version.status_reason
