"""Inspection with real R and real trained models, checked against R itself."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile

from deployer.model_files import model_version_materialize
from deployer.models import ModelVersion
from deployer.services.model_inspection import model_version_inspect
from deployer.services.model_intake import model_version_upload
from deployer.tests.intake_support import tar_gz
from testsupport.r_models import expected, rows_csv

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

CASES = {
    # case: (class, packages needed, prediction kind, column types)
    "lm": ("lm", [], "numeric", {"wt": "numeric", "hp": "numeric"}),
    "glm_binomial": ("glm", [], "probability", {"x": "numeric", "group": "factor"}),
    "randomforest": ("randomForest", ["randomForest"], "class", dict.fromkeys(["Sepal.Length"], "numeric")),
    "ranger": ("ranger", ["ranger"], "numeric", {"cyl": "numeric", "wt": "numeric"}),
    "rpart": ("rpart", ["rpart"], "class", {"Petal.Width": "numeric"}),
    "svm": ("svm", ["e1071"], "class", {"Petal.Length": "numeric"}),
}


def upload(owner: User, name: str, content: bytes, *, sample: bytes | None = None, packages: str = "") -> ModelVersion:
    outcome = model_version_upload(
        owner=owner,
        name=name,
        file=SimpleUploadedFile("model.bin", content),
        sample=SimpleUploadedFile("sample.csv", sample) if sample is not None else None,
        packages=packages,
    )
    return outcome.model_version


def inspect(model_version: ModelVersion) -> ModelVersion:
    return model_version_inspect(model_version=model_version)


def r_predict(model_path: Path, rows: list[dict[str, Any]], schema: dict[str, Any]) -> list[Any]:
    """What R's own predict() says for `rows`, outside rdeploy's runtime entirely."""
    script = """
    args <- commandArgs(trailingOnly = TRUE)
    suppressPackageStartupMessages({
      library(jsonlite); library(randomForest); library(ranger); library(rpart); library(e1071)
    })
    m <- readRDS(args[1]); d <- fromJSON(args[2]); schema <- fromJSON(args[3], simplifyVector = FALSE)
    for (column in schema$columns) {
      if (!is.null(column$levels)) d[[column$name]] <- factor(d[[column$name]], levels = unlist(column$levels))
    }
    p <- if (inherits(m, "ranger")) {
      predict(m, data = d)$predictions
    } else if (inherits(m, "glm")) {
      predict(m, d, type = "response")
    } else {
      predict(m, d)
    }
    if (is.factor(p)) p <- as.character(p)
    cat(toJSON(unname(p), digits = NA))
    """
    out = subprocess.run(
        [settings.RSCRIPT, "--vanilla", "-e", script, str(model_path), json.dumps(rows), json.dumps(schema)],
        check=True,
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout))


def assert_same_predictions(actual: list[Any], wanted: list[Any]) -> None:
    assert len(actual) == len(wanted)
    for got, want in zip(actual, wanted, strict=True):
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-9)
        else:
            assert got == want


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspection_with_a_sample_predicts_what_r_predicts_for_its_rows(
    owner: User, trained_models: Path, case: str
) -> None:
    model_class, packages, kind, types = CASES[case]
    case_dir = trained_models / case
    wanted = expected(case_dir)

    version = inspect(
        upload(owner, case.replace("_", "-"), (case_dir / "model.rds").read_bytes(), sample=rows_csv(wanted["rows"]))
    )

    assert version.status == ModelVersion.Status.READY, version.status_reason
    inspection = version.inspection
    assert model_class in inspection["class"]
    assert [p["name"] for p in inspection["packages"]["required"]] == packages
    assert all(p["version"] for p in inspection["packages"]["required"])
    columns = {c["name"]: c for c in inspection["schema"]["columns"]}
    assert list(columns) == list(wanted["rows"][0])
    for column, column_type in types.items():
        assert columns[column]["type"] == column_type
    assert inspection["prediction"]["kind"] == kind
    # The example request is the sample's first rows (at most 5).
    assert inspection["example"]["payload"] == wanted["rows"][:5]
    assert_same_predictions(inspection["example"]["predictions"]["predictions"], wanted["predictions"][:5])
    # Written by the host's R, read by the image's (R >= 4.4, which refuses top-level promises).
    assert inspection["r_version"]["writer"]
    assert tuple(int(part) for part in inspection["r_version"]["reader"].split(".")[:2]) >= (4, 4)
    assert inspection["rdeploy_json"]["schema"] == inspection["schema"]
    assert inspection["timings"]["total"] > 0


@pytest.mark.parametrize("case", ["glm_binomial", "randomforest", "ranger"])
def test_without_a_sample_the_schema_comes_from_the_model_and_the_example_is_synthesized(
    owner: User, trained_models: Path, case: str
) -> None:
    model_path = trained_models / case / "model.rds"

    version = inspect(upload(owner, case.replace("_", "-"), model_path.read_bytes()))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["schema_source"] == "model"
    payload = version.inspection["example"]["payload"]
    assert len(payload) == 1
    assert_same_predictions(
        version.inspection["example"]["predictions"]["predictions"],
        r_predict(model_path, payload, version.inspection["schema"]),
    )


def test_the_glm_factor_levels_are_recorded_in_training_order(owner: User, trained_models: Path) -> None:
    version = inspect(upload(owner, "glm", (trained_models / "glm_binomial" / "model.rds").read_bytes()))

    group = next(c for c in version.inspection["schema"]["columns"] if c["name"] == "group")
    assert group == {"name": "group", "type": "factor", "levels": ["low", "mid", "high"]}
    assert version.inspection["prediction"]["probabilities"] is True


@pytest.mark.parametrize("case", ["svm_no_prob", "ranger_no_prob"])
def test_a_classifier_without_probabilities_records_every_level_in_the_models_order(
    owner: User, trained_models: Path, case: str
) -> None:
    wanted = expected(trained_models / case)
    # The sample's rows all predict one class; the model's levels are not alphabetical.
    assert set(wanted["predictions"]) == {"setosa"}
    assert wanted["levels"] == ["virginica", "setosa", "versicolor"]

    version = inspect(
        upload(
            owner,
            case.replace("_", "-"),
            (trained_models / case / "model.rds").read_bytes(),
            sample=rows_csv(wanted["rows"]),
        )
    )

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["prediction"] == {"kind": "class", "probabilities": False, "classes": wanted["levels"]}
    assert version.inspection["rdeploy_json"]["prediction"]["levels"] == wanted["levels"]


@pytest.mark.parametrize(
    ("answer", "classes"),
    [
        ("as.character(predict(model, data))", ["virginica", "setosa", "versicolor"]),
        # Labels the model does not know: its levels would not describe them.
        ("toupper(as.character(predict(model, data)))", None),
    ],
)
def test_a_predict_fn_answering_strings_takes_the_classes_the_svm_keeps_when_they_cover_its_answers(
    owner: User, trained_models: Path, answer: str, classes: list[str] | None
) -> None:
    case_dir = trained_models / "svm_no_prob"
    predict_r = f"predict_fn <- function(model, data) {answer}\n".encode()
    bundle = tar_gz({"model.rds": (case_dir / "model.rds").read_bytes(), "predict.R": predict_r})

    version = inspect(upload(owner, "svm-strings", bundle, sample=rows_csv(expected(case_dir)["rows"])))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["prediction"]["kind"] == "class"
    assert version.inspection["prediction"].get("classes") == classes


def test_a_bundle_with_predict_r_takes_its_schema_from_the_sample(owner: User, trained_models: Path) -> None:
    case_dir = trained_models / "bundle_log_dose"
    wanted = expected(case_dir)
    bundle = tar_gz(
        {"model.rds": (case_dir / "model.rds").read_bytes(), "predict.R": (case_dir / "predict.R").read_bytes()}
    )

    version = inspect(upload(owner, "dose", bundle, sample=rows_csv(wanted["rows"])))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["hooks"] == ["predict_fn"]
    assert version.inspection["schema_source"] == "sample"
    assert version.inspection["schema"] == {"columns": [{"name": "dose", "type": "numeric"}]}
    assert_same_predictions(version.inspection["example"]["predictions"]["predictions"], wanted["predictions"])


def test_a_ready_version_materializes_a_directory_the_runtime_serves(
    owner: User, trained_models: Path, tmp_path: Path
) -> None:
    version = inspect(upload(owner, "forest", (trained_models / "randomforest" / "model.rds").read_bytes()))

    directory = model_version_materialize(model_version=version, destination=tmp_path / "model")

    config = json.loads((directory / "rdeploy.json").read_text())
    assert config["packages"] == [{"name": "randomForest", "version": config["packages"][0]["version"]}]
    assert config["prediction"] == {
        "kind": "class",
        "levels": ["setosa", "versicolor", "virginica"],
        "probabilities": True,
    }
    assert config["model_class"] == ["randomForest.formula", "randomForest"]
    assert config["r_version"] == version.inspection["r_version"]["writer"]
    assert [c["name"] for c in config["schema"]["columns"]] == [
        "Sepal.Length",
        "Sepal.Width",
        "Petal.Length",
        "Petal.Width",
    ]


def r_object(tmp_path: Path, expression: str) -> bytes:
    path = tmp_path / "object.rds"
    subprocess.run(
        [settings.RSCRIPT, "--vanilla", "-e", f"saveRDS({expression}, '{path}')"], check=True, capture_output=True
    )
    return path.read_bytes()


def test_an_object_without_a_predict_method_is_not_a_model(owner: User, tmp_path: Path) -> None:
    version = inspect(upload(owner, "iris-data", r_object(tmp_path, "iris")))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith("not an R model: an object of class data.frame has no predict() method")


def test_a_model_needing_a_package_no_source_has_names_it_and_how_to_fix_it(
    owner: User, tmp_path: Path, settings: Any
) -> None:
    settings.CRAN_REPO = None
    # An S4-style class records the package its predict() method comes from.
    model = r_object(tmp_path, 'structure(list(), class = structure("gizmo", package = "gizmomodels"))')

    version = inspect(upload(owner, "gizmo", model))

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "image_build_failed"
    assert version.status_reason.startswith("the serving image (with gizmomodels) could not be built")
    assert "not in Debian (as r-cran-*) and RDEPLOY_CRAN_REPO is not set: gizmomodels" in version.status_reason
    assert version.inspection["image_packages"] == []


def test_a_requested_package_that_is_missing_is_named(owner: User, trained_models: Path, settings: Any) -> None:
    settings.CRAN_REPO = None

    version = inspect(
        upload(owner, "lm", (trained_models / "lm" / "model.rds").read_bytes(), packages="jsonlite, notapackage42")
    )

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.endswith("RDEPLOY_CRAN_REPO is not set: notapackage42")


def test_predict_failing_on_the_sample_gives_rs_error_message(owner: User, trained_models: Path) -> None:
    model = (trained_models / "lm" / "model.rds").read_bytes()
    bundle = tar_gz(
        {"model.rds": model, "predict.R": b"predict_fn <- function(model, data) stop('wt must be positive')\n"}
    )

    version = inspect(upload(owner, "failing", bundle, sample=b"wt,hp\n2.5,110\n"))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith("predict() failed on the example input")
    assert "wt must be positive" in version.status_reason


def test_a_sample_that_does_not_fit_the_model_is_explained(owner: User, trained_models: Path) -> None:
    version = inspect(
        upload(owner, "glm", (trained_models / "glm_binomial" / "model.rds").read_bytes(), sample=b"x,group\n1,huge\n")
    )

    assert version.status == ModelVersion.Status.INVALID
    assert "the sample does not fit the model's inputs" in version.status_reason
    assert "unknown level 'huge'" in version.status_reason


def test_a_model_that_loads_too_slowly_times_out(owner: User, trained_models: Path, settings: Any) -> None:
    settings.INSPECT_TIMEOUT_SECONDS = 3
    model = (trained_models / "lm" / "model.rds").read_bytes()
    bundle = tar_gz(
        {
            "model.rds": model,
            "predict.R": b"load_fn <- function(d) { Sys.sleep(60); readRDS(file.path(d, 'model.rds')) }\n",
        }
    )

    version = inspect(upload(owner, "slow", bundle))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith("inspection did not finish within 3 s")
    assert version.inspection["timings"]["container"] < 10


def test_a_model_that_needs_too_much_memory_is_invalid(owner: User, trained_models: Path, settings: Any) -> None:
    settings.INSPECT_MEMORY_BYTES = 1024**3
    model = (trained_models / "lm" / "model.rds").read_bytes()
    bundle = tar_gz(
        {
            "model.rds": model,
            "predict.R": b"load_fn <- function(d) { big <- numeric(4e8); readRDS(file.path(d, 'model.rds')) }\n",
        }
    )

    version = inspect(upload(owner, "hungry", bundle))

    assert version.status == ModelVersion.Status.INVALID
    assert "out of memory" in version.status_reason


def test_inspecting_a_version_that_is_already_done_changes_nothing(owner: User, trained_models: Path) -> None:
    version = inspect(upload(owner, "lm", (trained_models / "lm" / "model.rds").read_bytes()))
    inspected_at = version.inspected_at

    again = inspect(version)

    assert again.status == ModelVersion.Status.READY
    assert again.inspected_at == inspected_at


@pytest.fixture(scope="module")
def toy_repository(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CRAN-like repository (file://) holding one small package with a predict method."""
    root = tmp_path_factory.mktemp("toy-repo")
    package = root / "rdeploytoy"
    (package / "R").mkdir(parents=True)
    (package / "DESCRIPTION").write_text(
        "Package: rdeploytoy\nVersion: 0.1.0\nTitle: Toy Model\nDescription: A toy model for tests.\n"
        "Authors@R: person('A', 'B', email = 'a@b.c', role = c('aut', 'cre'))\nLicense: MIT\n"
    )
    (package / "NAMESPACE").write_text("S3method(predict, toymodel)\n")
    (package / "R" / "toy.R").write_text("predict.toymodel <- function(object, newdata, ...) newdata$x * object$k\n")
    contrib = root / "repo" / "src" / "contrib"
    contrib.mkdir(parents=True)
    subprocess.run(["R", "CMD", "build", "--no-manual", str(package)], cwd=contrib, check=True, capture_output=True)
    subprocess.run(
        [settings.RSCRIPT, "-e", f"tools::write_PACKAGES('{contrib}', type = 'source')"],
        check=True,
        capture_output=True,
    )
    return f"file://{root / 'repo'}"


def test_missing_packages_come_from_the_repository_into_the_image_that_inspects_the_model(
    owner: User, tmp_path: Path, settings: Any, toy_repository: str
) -> None:
    settings.CRAN_REPO = toy_repository
    model = r_object(tmp_path, 'structure(list(k = 2), class = "toymodel")')

    version = inspect(upload(owner, "toy", model, sample=b"x\n1.5\n4\n", packages="rdeploytoy"))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["image_packages"] == ["rdeploytoy"]
    assert version.inspection["image"].startswith("localhost/rdeploy-runtime:")
    assert version.inspection["sandbox"]["image"] == version.inspection["image"]
    assert version.inspection["packages"]["required"] == [{"name": "rdeploytoy", "version": "0.1.0"}]
    assert version.inspection["example"]["predictions"]["predictions"] == [3, 8]

    # The next model with the same packages reuses the image.
    again = inspect(
        upload(
            owner,
            "toy",
            r_object(tmp_path, 'structure(list(k = 3), class = "toymodel")'),
            sample=b"x\n1\n",
            packages="rdeploytoy",
        )
    )
    assert again.inspection["image"] == version.inspection["image"]
    assert again.inspection["timings"]["image"] < 1


def test_a_package_the_model_turns_out_to_need_is_added_to_its_image_and_inspected_again(
    owner: User, tmp_path: Path, settings: Any, toy_repository: str
) -> None:
    settings.CRAN_REPO = toy_repository
    model = r_object(tmp_path, 'structure(list(k = 2), class = structure("toymodel", package = "rdeploytoy"))')

    version = inspect(upload(owner, "toy", model, sample=b"x\n1\n"))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["image_packages"] == ["rdeploytoy"]
    assert version.inspection["example"]["predictions"]["predictions"] == [2]


def test_without_a_repository_an_unknown_package_stays_invalid(owner: User, tmp_path: Path, settings: Any) -> None:
    settings.CRAN_REPO = None
    model = r_object(tmp_path, 'structure(list(k = 2), class = "toymodel")')

    version = inspect(upload(owner, "toy", model, sample=b"x\n1\n", packages="rdeploytoy"))

    assert version.status == ModelVersion.Status.INVALID
    assert "rdeploytoy" in version.status_reason
    assert "RDEPLOY_CRAN_REPO" in version.status_reason


def forged_verdict_bundle(tmp_path: Path, verdict: Any) -> bytes:
    """A bundle whose predict.R prints ``verdict`` as inspect.R's result line and quits."""
    printed = json.dumps(verdict)
    predict_r = f"sink()\ncat({json.dumps(printed)}, '\\n', sep = '')\nquit(save = 'no', status = 0)\n"
    model = r_object(tmp_path, "lm(mpg ~ wt, data = mtcars)")
    return tar_gz({"model.rds": model, "predict.R": predict_r.encode()})


@pytest.mark.parametrize(
    ("packages", "message"),
    [
        ([f"pkg{i}" for i in range(60)], "rdeploy adds at most 50"),
        (["ranger", "x'); system('id'); ('"], "which is not an R package name"),
        (["--version"], "which is not an R package name"),
    ],
    ids=["too-many", "code-in-a-name", "an-option"],
)
def test_a_package_list_forged_by_the_models_code_builds_nothing(
    owner: User, tmp_path: Path, settings: Any, packages: list[str], message: str
) -> None:
    # The container's stdout is the model's to write: predict.R prints its own verdict.
    settings.CRAN_REPO = None
    verdict = {"status": "invalid", "code": "missing_packages", "missing_packages": packages}

    version = inspect(upload(owner, "forged", forged_verdict_bundle(tmp_path, verdict)))

    assert version.status == ModelVersion.Status.INVALID
    assert message in version.status_reason
    assert version.inspection["image_packages"] == []


ACCEPTED = {"status": "ok", "class": ["lm"], "packages": {"required": []}, "prediction": {"kind": "numeric"}}


@pytest.mark.parametrize(
    "verdict",
    [
        {"status": "ok"},
        {**ACCEPTED, "example": "not a record"},
        {**ACCEPTED, "packages": {"required": [{"name": "x'); system('id'); ('", "version": "1"}]}},
        {**ACCEPTED, "packages": {"required": [{"name": f"pkg{i}", "version": "1"} for i in range(60)]}},
        ["not", "a", "verdict"],
    ],
    ids=["bare-ok", "bad-example", "code-as-a-package", "too-many-packages", "a-list"],
)
def test_a_verdict_forged_in_the_wrong_shape_is_refused_not_stored(owner: User, tmp_path: Path, verdict: Any) -> None:
    version = inspect(upload(owner, "forged", forged_verdict_bundle(tmp_path, verdict)))

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "bad_result"
    assert version.status_reason.startswith("the inspection's result could not be read")


def renv_lock(packages: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "R": {"Version": "4.2.2", "Repositories": []},
            "Packages": {
                name: {"Package": name, "Version": version, "Source": "Repository", "Repository": "CRAN"}
                for name, version in packages.items()
            },
        }
    ).encode()


def test_renv_lock_packages_are_recorded_with_their_versions(owner: User, trained_models: Path, settings: Any) -> None:
    settings.CRAN_REPO = None
    model = (trained_models / "randomforest" / "model.rds").read_bytes()
    bundle = tar_gz({"model.rds": model, "renv.lock": renv_lock({"randomForest": "4.7-1.1", "rpart": "4.1.19"})})

    version = inspect(upload(owner, "forest", bundle))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    packages = version.inspection["packages"]
    assert {"name": "rpart", "version": "4.1.19"} in packages["renv_lock"]
    assert packages["renv_missing"] == []
    assert [p["name"] for p in packages["required"]] == ["randomForest"]


def test_an_renv_lock_package_no_source_has_makes_the_model_invalid_naming_it(
    owner: User, trained_models: Path, settings: Any
) -> None:
    settings.CRAN_REPO = None
    model = (trained_models / "randomforest" / "model.rds").read_bytes()
    bundle = tar_gz({"model.rds": model, "renv.lock": renv_lock({"randomForest": "4.7-1.1", "ghostpkg": "1.0.0"})})

    version = inspect(upload(owner, "forest", bundle))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.endswith("RDEPLOY_CRAN_REPO is not set: ghostpkg")


def test_renv_lock_packages_missing_here_are_installed_when_a_repository_is_set(
    owner: User, tmp_path: Path, settings: Any, toy_repository: str
) -> None:
    settings.CRAN_REPO = toy_repository
    model = r_object(tmp_path, "lm(mpg ~ wt, data = mtcars)")
    bundle = tar_gz({"model.rds": model, "renv.lock": renv_lock({"rdeploytoy": "0.1.0"})})

    version = inspect(upload(owner, "cars", bundle))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["image_packages"] == ["rdeploytoy"]
    assert version.inspection["packages"]["renv_missing"] == []


def test_an_renv_lock_with_a_github_package_makes_the_model_invalid_naming_the_package_and_the_fix(
    owner: User, tmp_path: Path
) -> None:
    lock = json.loads(renv_lock({"randomForest": "4.7-1.1"}))
    lock["Packages"]["ghpkg"] = {
        "Package": "ghpkg",
        "Version": "0.0.1",
        "Source": "GitHub",
        "RemoteType": "github",
        "RemoteUsername": "someone",
        "RemoteRepo": "ghpkg",
        "RemoteSha": "0123456789abcdef",
    }
    model = r_object(tmp_path, "lm(mpg ~ wt, data = mtcars)")
    bundle = tar_gz({"model.rds": model, "renv.lock": json.dumps(lock).encode()})

    version = inspect(upload(owner, "cars", bundle))

    assert version.status == ModelVersion.Status.INVALID
    assert "package 'ghpkg' comes from GitHub (Source: GitHub)" in version.status_reason
    assert "only from CRAN-like repositories (Source: Repository)" in version.status_reason
    assert "install.packages('ghpkg')" in version.status_reason


@pytest.mark.parametrize("case", ["glm_binomial", "bundle_log_dose"])
def test_the_runtime_answers_the_example_request_from_the_materialized_directory_as_inspection_recorded(
    owner: User, trained_models: Path, tmp_path: Path, case: str
) -> None:
    case_dir = trained_models / case
    content = (case_dir / "model.rds").read_bytes()
    if (case_dir / "predict.R").exists():
        content = tar_gz({"model.rds": content, "predict.R": (case_dir / "predict.R").read_bytes()})
    version = inspect(upload(owner, "served", content, sample=rows_csv(expected(case_dir)["rows"])))
    directory = model_version_materialize(model_version=version, destination=tmp_path / "model")
    script = """
    args <- commandArgs(trailingOnly = TRUE)
    source(file.path(args[1], "rdeploy_runtime.R"))
    bundle <- rd_load_model(args[2])
    response <- rd_handle_request(bundle, "POST", "/invocations", charToRaw(args[3]), "Content-Type: application/json")
    cat(response$body)
    """

    served = subprocess.run(
        [
            settings.RSCRIPT,
            "--vanilla",
            "-e",
            script,
            str(settings.RUNTIME_DIR),
            str(directory),
            json.dumps(version.inspection["example"]["payload"]),
        ],
        check=True,
        capture_output=True,
        text=True,
    )

    assert json.loads(served.stdout) == version.inspection["example"]["predictions"]


def test_uploading_the_same_bytes_after_a_failed_inspection_inspects_them_again_with_the_new_sample(
    owner: User, trained_models: Path
) -> None:
    model = (trained_models / "glm_binomial" / "model.rds").read_bytes()
    failed = inspect(upload(owner, "glm", model, sample=b"x,group\n1,huge\n"))
    assert failed.status == ModelVersion.Status.INVALID

    retried = upload(owner, "glm", model, sample=b"x,group\n0.5,mid\n")

    assert (retried.pk, retried.status) == (failed.pk, ModelVersion.Status.INSPECTING)
    assert retried.sample.read() == b"x,group\n0.5,mid\n"
    version = inspect(retried)
    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert version.inspection["example"]["payload"] == [{"x": 0.5, "group": "mid"}]


def test_the_reinspect_command_queues_versions_for_inspection(owner: User, trained_models: Path) -> None:
    from django.core.management import call_command

    version = inspect(upload(owner, "lm", (trained_models / "lm" / "model.rds").read_bytes()))
    assert version.status == ModelVersion.Status.READY

    call_command("rdeploy_reinspect", str(version.pk))

    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INSPECTING
    assert list(version.inspection) == ["queued_at"]
    assert inspect(version).status == ModelVersion.Status.READY


def test_inspections_queued_longer_ago_than_a_task_may_run_are_queued_again(
    owner: User, trained_models: Path, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from deployer.services.model_intake import model_versions_requeue_stuck

    model = (trained_models / "lm" / "model.rds").read_bytes()
    stuck = upload(owner, "stuck", model)
    fresh = upload(owner, "fresh", model)
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 120)
    ModelVersion.objects.filter(pk=stuck.pk).update(inspection={"queued_at": long_ago.isoformat()})

    assert model_versions_requeue_stuck() == [stuck.pk]
    assert model_versions_requeue_stuck() == []
    stuck.refresh_from_db()
    assert stuck.inspection["queued_at"] > long_ago.isoformat()
    assert fresh.status == ModelVersion.Status.INSPECTING


def test_an_inspection_that_outruns_the_task_time_limit_ends_invalid(
    owner: User, trained_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    import tasks.inspection

    def too_slow(**kwargs: Any) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(tasks.inspection, "model_version_inspect", too_slow)
    version = upload(owner, "lm", (trained_models / "lm" / "model.rds").read_bytes())

    tasks.inspection.model_version_inspect_task(version.pk)

    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert "task time limit" in version.status_reason


def test_r_killed_by_sigkill_as_the_oom_killer_does_is_reported_as_out_of_memory(
    owner: User, trained_models: Path
) -> None:
    model = (trained_models / "lm" / "model.rds").read_bytes()
    bundle = tar_gz({"model.rds": model, "predict.R": b"load_fn <- function(d) tools::pskill(Sys.getpid(), 9L)\n"})

    version = inspect(upload(owner, "killed", bundle))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith("R ran out of memory inspecting the model")


@pytest.mark.parametrize(
    ("engine", "reason"),
    [
        ({"PATH": "/nonexistent"}, "there is no podman command on this server's PATH"),
        (
            {"RDEPLOY_CONTAINER_CLI": "docker", "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
            "the container engine (docker) does not answer",
        ),
        ({"RDEPLOY_BASE_IMAGE": "localhost/rdeploy-base:missing"}, "the container engine has no base image"),
    ],
    ids=["no-engine-command", "engine-not-answering", "no-base-image"],
)
def test_without_a_working_engine_the_model_is_invalid_with_the_reason_and_never_run_on_the_host(
    owner: User,
    trained_models: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    engine: dict[str, str],
    reason: str,
) -> None:
    version = upload(owner, "lm", (trained_models / "lm" / "model.rds").read_bytes())
    for name, value in engine.items():
        if name.startswith("RDEPLOY_"):
            setattr(settings, name.removeprefix("RDEPLOY_"), value)
        else:
            monkeypatch.setenv(name, value)

    version = inspect(version)

    assert version.status == ModelVersion.Status.INVALID
    assert version.inspection["code"] == "engine"
    assert version.status_reason.startswith("this server cannot run model code now: ")
    assert reason in version.status_reason
    assert "class" not in version.inspection


@pytest.mark.parametrize(
    ("lock", "reason"),
    [
        # json.loads raises RecursionError, not ValueError, on this: it used to escape the
        # task and leave the version inspecting, re-queued every five minutes for ever.
        (b"[" * 100_000, "renv.lock is not valid JSON: it is nested too deeply"),
        (b" " * (6 * 1024**2) + b"{}", "renv.lock is above 5 MiB"),
    ],
    ids=["nested", "oversized"],
)
def test_a_hostile_renv_lock_makes_the_model_invalid_with_a_reason(
    owner: User, trained_models: Path, lock: bytes, reason: str
) -> None:
    model = (trained_models / "randomforest" / "model.rds").read_bytes()

    version = inspect(upload(owner, "forest", tar_gz({"model.rds": model, "renv.lock": lock})))

    assert version.status == ModelVersion.Status.INVALID
    assert version.status_reason.startswith(reason)


def test_an_unforeseen_error_in_inspection_gives_a_verdict_instead_of_inspecting_for_ever(
    owner: User, trained_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import inspection

    version = upload(owner, "forest", (trained_models / "randomforest" / "model.rds").read_bytes())

    def broken(**_: object) -> ModelVersion:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(inspection, "model_version_inspect", broken)
    with pytest.raises(RecursionError):
        inspection.model_version_inspect_task(version.pk)

    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert "could not finish inspecting this model" in version.status_reason
