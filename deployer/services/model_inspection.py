"""Model inspection: inspect.R loads and test-predicts the model in a locked-down container
(deployer/integrations/containers/sandbox.py) of the serving image it will be served in,
and the version becomes `ready` with its inspection record, or `invalid` with a reason."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from deployer.artifacts import MODEL_FILE, ArtifactRejected, bundles, sniffing
from deployer.build_context import MAX_RENV_LOCK_BYTES, PACKAGE_NAME, check_renv_lock
from deployer.integrations.containers import cli, images, sandbox
from deployer.model_files import artifact_unpack
from deployer.models import ModelVersion
from deployer.services.images import serving_image_ensure

logger = logging.getLogger(__name__)

RENV_LOCK = "renv.lock"
INSPECT_SCRIPT = Path(__file__).resolve().parent.parent / "r" / "inspect.R"
# The sample's name in the inspection container's scratch (inspect.R sniffs CSV or JSON).
SAMPLE_NAME = "sample"
# Room in the inspection container's tmpfs for R's temporary files, beyond the model.
SCRATCH_HEADROOM_BYTES = 256 * 1024**2
# What the model's output may put into a reason and into the record the uploader sees.
MAX_REASON_CHARS = 2000
# What inspect.R reports that the inspection record keeps (its other fields are rdeploy's).
OUTCOME_FIELDS = frozenset(
    {"class", "hooks", "packages", "schema", "schema_source", "prediction", "example", "warnings"}
    | {"code", "reason", "missing_packages"}
)
STDERR_TAIL_CHARS = 4000
# Image builds install the packages the inspected R reports: a ceiling keeps a hostile
# model from turning one upload into a build of a whole repository.
MAX_PACKAGES_TO_INSTALL = 50
MAX_IMAGE_ROUNDS = 3


def inspection_containers_remove_leftovers() -> None:
    """Removes the stopped inspection containers of workers that died mid-inspection (their
    inspections are queued again by `model_versions_requeue_stuck`)."""
    try:
        sandbox.remove_leftovers(wall_seconds=settings.INSPECT_TIMEOUT_SECONDS)
    except (cli.EngineUnavailable, cli.EngineCommandFailed):
        # /readyz reports an engine that does not answer; the next round tries again.
        logger.warning("could not remove leftover inspection containers", exc_info=True)


def _inspection_limits(files: dict[str, Path]) -> sandbox.Limits:
    # The tmpfs holds the unpacked model and sample, plus room for R's temporary files;
    # its pages count against the container's memory limit too.
    staged = sum(
        path.stat().st_size for source in files.values() for path in [source, *source.rglob("*")] if path.is_file()
    )
    return sandbox.Limits(
        memory_bytes=settings.INSPECT_MEMORY_BYTES,
        wall_seconds=settings.INSPECT_TIMEOUT_SECONDS,
        scratch_bytes=staged + SCRATCH_HEADROOM_BYTES,
    )


def _run_inspection(
    *,
    model_version: ModelVersion,
    image: str,
    files: dict[str, Path],
    limits: sandbox.Limits,
    requested: list[str],
) -> tuple[dict[str, Any], sandbox.Result | None]:
    """One run of inspect.R in a container of `image`: its verdict, and the run's result
    (None when the container engine could not run it)."""
    sample = f"{sandbox.SCRATCH}/{SAMPLE_NAME}" if SAMPLE_NAME in files else ""
    try:
        result = sandbox.run(
            image=image,
            files=files,
            command=[
                "Rscript",
                "--vanilla",
                f"{sandbox.SCRATCH}/rdeploy/inspect.R",
                f"{sandbox.SCRATCH}/model",
                sample,
                ",".join(requested),
            ],
            limits=limits,
            environment={"RDEPLOY_RUNTIME_DIR": f"{sandbox.SCRATCH}/rdeploy"},
            name_hint=str(model_version.pk),
        )
    except sandbox.SandboxUnavailable as exc:
        return {"status": "invalid", "code": "engine", "reason": _engine_reason(str(exc))}, None
    if result.timed_out:
        limit = settings.INSPECT_TIMEOUT_SECONDS
        return {
            "status": "invalid",
            "code": "timeout",
            "reason": f"inspection did not finish within {limit} s (RDEPLOY_INSPECT_TIMEOUT): "
            "loading or predicting with the model takes too long",
        }, result
    if result.output_exceeded:
        return {
            "status": "invalid",
            "code": "too_much_output",
            "reason": f"the model printed more than {sandbox.OUTPUT_LIMIT // 1024**2} MiB while being inspected",
        }, result
    if result.out_of_memory:
        limit_mib = settings.INSPECT_MEMORY_BYTES // 1024**2
        return {
            "status": "invalid",
            "code": "out_of_memory",
            "reason": f"R ran out of memory inspecting the model (limit {limit_mib} MiB, RDEPLOY_INSPECT_MEMORY_BYTES)",
        }, result
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.exit_code == 0 and lines:
        try:
            return _checked_outcome(json.loads(lines[-1])), result
        # RecursionError: JSON nested deeper than Python's parser goes, printed by the model.
        except (ValueError, RecursionError) as exc:
            reason = f"the inspection's result could not be read ({exc}): the model's code may have printed over it"
            return {"status": "invalid", "code": "bad_result", "reason": reason}, result
    stderr = result.stderr_tail.strip().splitlines()
    detail = " ".join(stderr[-3:])[-MAX_REASON_CHARS:] if stderr else f"exit status {result.exit_code}"
    return {"status": "invalid", "code": "crashed", "reason": f"R stopped while inspecting the model: {detail}"}, result


def _checked_outcome(outcome: Any) -> dict[str, Any]:
    """inspect.R's verdict, which the model's own code could have printed instead: the
    shape the rest of rdeploy reads, or ValueError."""
    if not isinstance(outcome, dict) or outcome.get("status") not in ("ok", "invalid"):
        raise ValueError("not a verdict")
    if outcome["status"] == "invalid":
        if not isinstance(outcome.get("code"), str) or not isinstance(outcome.get("reason", ""), str):
            raise ValueError("a refusal without a code")
        outcome["reason"] = outcome.get("reason", "")[:MAX_REASON_CHARS]
        return outcome
    packages = outcome.get("packages")
    prediction = outcome.get("prediction")
    if not (
        isinstance(outcome.get("class"), list)
        and all(isinstance(name, str) for name in outcome["class"])
        and isinstance(packages, dict)
        and isinstance(packages.get("required"), list)
        and isinstance(prediction, dict)
        and isinstance(prediction.get("kind"), str)
        and all(isinstance(outcome.get(field), dict | None) for field in ("schema", "example"))
        and isinstance(outcome.get("warnings", []), list)
    ):
        raise ValueError("an acceptance without a class, packages or prediction kind")
    # Serving images are built with these names later: the rules the packages to add obey.
    required = packages["required"]
    if len(required) > MAX_PACKAGES_TO_INSTALL or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and PACKAGE_NAME.match(p["name"]) for p in required
    ):
        raise ValueError(f"the required packages are not at most {MAX_PACKAGES_TO_INSTALL} R package names")
    return outcome


def _packages_to_install(outcome: dict[str, Any]) -> list[str]:
    """What a serving image with more packages could fix: packages the model needs, or that
    its renv.lock lists (predict.R may load them), that the image lacks.

    The list comes from the container's stdout, which the model's own code can write:
    ValueError unless it is at most MAX_PACKAGES_TO_INSTALL valid R package names, since
    image builds run with network access."""
    if outcome.get("code") == "missing_packages":
        names = outcome.get("missing_packages")
    elif outcome.get("status") == "ok":
        names = (outcome.get("packages") or {}).get("renv_missing") or []
    else:
        return []
    if not isinstance(names, list):
        raise ValueError("the inspection reported its missing packages in an unexpected form: no image was built")
    for name in names:
        if not isinstance(name, str) or not PACKAGE_NAME.match(name):
            raise ValueError(
                f"the inspection reported {str(name)[:80]!r} as a package to install, which is not an R package "
                "name: no image was built"
            )
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_PACKAGES_TO_INSTALL:
        raise ValueError(_too_many_packages(len(unique)))
    return unique


class ImageUnavailable(Exception):
    """No serving image for the model's packages; ``code`` is "engine" when the container
    engine is the problem, "image_build_failed" when the packages are."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _serving_image(packages: list[str], renv_lock: bytes | None) -> str:
    """The serving image with ``packages`` (built now when the engine lacks it): inspection
    runs in the image the model will be served in, locally and on SageMaker."""
    try:
        return serving_image_ensure(packages=packages, renv_lock=renv_lock)
    except (cli.EngineUnavailable, cli.EngineCommandFailed) as exc:
        raise ImageUnavailable("engine", _engine_reason(cli.engine_problem() or str(exc))) from exc
    except images.ImageBuildFailed as exc:
        # A missing base image fails the build too: that is the operator's to fix.
        if problem := cli.engine_problem():
            raise ImageUnavailable("engine", _engine_reason(problem)) from exc
        errors = [line.strip() for line in exc.lines if line.strip().startswith("Error")]
        detail = errors[0] if errors else " ".join(exc.lines[-3:]) or str(exc)
        named = ", ".join(packages) or "no extra R packages"
        reason = f"the serving image (with {named}) could not be built: {detail}"[:MAX_REASON_CHARS]
        raise ImageUnavailable("image_build_failed", reason) from exc
    except ValueError as exc:
        raise ImageUnavailable("image_build_failed", f"the serving image cannot be described: {exc}") from exc


def _engine_reason(problem: str) -> str:
    return f"this server cannot run model code now: {problem}"


def _too_many_packages(count: int) -> str:
    return (
        f"the model needs {count} R packages its image lacks, and rdeploy adds at most "
        f"{MAX_PACKAGES_TO_INSTALL} per model: use fewer packages, then upload again"
    )


def _rdeploy_json(outcome: dict[str, Any], writer_r_version: str | None) -> dict[str, Any]:
    """The runtime's rdeploy.json (container_templates/runtime/README.md)."""
    found = outcome["prediction"]
    prediction: dict[str, Any] = {"kind": found["kind"]}
    if found.get("classes"):
        prediction["levels"] = found["classes"]
    if "probabilities" in found:
        prediction["probabilities"] = found["probabilities"]
    config: dict[str, Any] = {
        "format_version": 1,
        "r_version": writer_r_version or outcome.get("reader_r_version"),
        "packages": outcome["packages"]["required"],
        "model_class": outcome["class"],
        "prediction": prediction,
    }
    if outcome.get("schema"):
        config["schema"] = outcome["schema"]
    return config


@dataclass(frozen=True)
class _Inspected:
    outcome: dict[str, Any]
    # The last image inspected in ("" when none could be had) and its packages.
    image: str
    image_packages: list[str]
    runs: list[sandbox.Result]


def _inspect_in_serving_images(
    *,
    model_version: ModelVersion,
    files: dict[str, Path],
    limits: sandbox.Limits,
    renv_lock: bytes | None,
    timings: dict[str, float],
) -> _Inspected:
    """Inspects in the serving image with the packages the uploader asked for, then, while
    R reports packages that image lacks, in the image with those added: adding one can
    reveal the next (the model loads further each round), so a few rounds, one image per
    package set."""
    requested = list(model_version.requested_packages)
    wanted = list(requested)
    image, image_packages = "", list(wanted)
    runs: list[sandbox.Result] = []
    outcome: dict[str, Any] = {}
    for round_ in range(MAX_IMAGE_ROUNDS):
        stage = timezone.now()
        try:
            image, image_packages = _serving_image(wanted, renv_lock), list(wanted)
        except ImageUnavailable as exc:
            outcome = {"status": "invalid", "code": exc.code, "reason": str(exc)}
            break
        finally:
            timings["image"] = timings.get("image", 0.0) + (timezone.now() - stage).total_seconds()
        outcome, result = _run_inspection(
            model_version=model_version, image=image, files=files, limits=limits, requested=requested
        )
        if result is not None:
            runs.append(result)
        try:
            new = [p for p in _packages_to_install(outcome) if p not in wanted]
            if len(wanted) + len(new) > MAX_PACKAGES_TO_INSTALL:
                raise ValueError(_too_many_packages(len(wanted) + len(new)))
        except ValueError as exc:
            outcome = {"status": "invalid", "code": "bad_package_list", "reason": str(exc)}
            break
        if not new:
            break
        if round_ == MAX_IMAGE_ROUNDS - 1:
            outcome = {
                "status": "invalid",
                "code": "missing_packages",
                "reason": f"the model still needs R packages after {MAX_IMAGE_ROUNDS} image builds: "
                f"{', '.join(new)}: name every package it needs in `packages` and upload again",
            }
            break
        wanted += new
    return _Inspected(outcome, image, image_packages, runs)


def model_version_inspect(*, model_version: ModelVersion) -> ModelVersion:
    """Loads and test-predicts the model in a locked-down container of the serving image;
    the version becomes `ready` with its inspection record (and the image that serves it),
    or `invalid` with a reason. A no-op unless `inspecting`."""
    if model_version.status != ModelVersion.Status.INSPECTING:
        return model_version
    started = timezone.now()
    timings: dict[str, float] = {}
    # Only rdeploy writes here: the model's code runs in a container that gets a copy.
    with tempfile.TemporaryDirectory(prefix="rdeploy-inspect-") as directory:
        staging = Path(directory)
        stage = timezone.now()
        model_dir = staging / "model"
        try:
            artifact_unpack(model_version, model_dir)
        except ArtifactRejected as exc:
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=str(exc), inspection={})
        except FileNotFoundError as exc:
            reason = f"the stored model file is missing: {exc}"
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})
        except OSError as exc:
            # Left uncaught, the version would stay `inspecting` and be re-queued forever.
            # Uploading the same bytes again inspects them again (after e.g. a full disk).
            logger.exception("could not unpack model version %s", model_version.pk)
            reason = f"the model could not be unpacked on this server: {exc}"
            return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})
        lock = model_dir / RENV_LOCK
        renv_lock = None
        if lock.is_file():
            # One byte past the limit is enough for check_renv_lock to refuse it.
            with lock.open("rb") as lock_file:
                renv_lock = lock_file.read(MAX_RENV_LOCK_BYTES + 1)
            # Said here, at upload, rather than when an image build for SageMaker refuses it.
            try:
                check_renv_lock(renv_lock)
            except ValueError as exc:
                return _finish(model_version, status=ModelVersion.Status.INVALID, reason=str(exc), inspection={})
        files = {
            "model": model_dir,
            "rdeploy/rdeploy_runtime.R": Path(settings.RUNTIME_DIR) / "rdeploy_runtime.R",
            "rdeploy/inspect.R": INSPECT_SCRIPT,
        }
        if model_version.sample:
            files[SAMPLE_NAME] = staging / SAMPLE_NAME
            with model_version.sample.open("rb") as source:
                bundles.copy_stream(source, files[SAMPLE_NAME])
        header = sniffing.sniff_file(model_dir / MODEL_FILE).rds
        limits = _inspection_limits(files)
        timings["prepare"] = (timezone.now() - stage).total_seconds()

        inspected = _inspect_in_serving_images(
            model_version=model_version, files=files, limits=limits, renv_lock=renv_lock, timings=timings
        )

    outcome, image, runs = inspected.outcome, inspected.image, inspected.runs
    timings["container"] = sum(run.seconds for run in runs)
    timings["total"] = (timezone.now() - started).total_seconds()
    inspection: dict[str, Any] = {
        **{key: value for key, value in outcome.items() if key in OUTCOME_FIELDS},
        "r_version": {
            "writer": header.writer_r_version if header else None,
            "reader": outcome.get("reader_r_version"),
        },
        "rds": dataclasses.asdict(header) if header else None,
        "image": image,
        # What `image` was built with beyond the base's packages (with the bundle's renv.lock).
        # Endpoints render theirs from all the model's packages instead, so the recipe also
        # works on a bare Debian base (CodeBuild): docs/containers.md.
        "image_packages": inspected.image_packages,
        "sandbox": sandbox.isolation(image, limits) if runs else None,
        "timings": {"r_script": outcome.get("timings", {}), **timings},
    }
    if outcome.get("status") == "ok":
        inspection["rdeploy_json"] = _rdeploy_json(outcome, header.writer_r_version if header else None)
        return _finish(model_version, status=ModelVersion.Status.READY, reason="", inspection=inspection)
    if runs:
        inspection["exit_code"] = runs[-1].exit_code
        inspection["stderr_tail"] = runs[-1].stderr_tail[-STDERR_TAIL_CHARS:]
    return _finish(
        model_version, status=ModelVersion.Status.INVALID, reason=str(outcome.get("reason")), inspection=inspection
    )


def model_version_inspection_abandon(*, model_version: ModelVersion, reason: str) -> ModelVersion:
    """Ends an inspection that cannot finish (the task's time limit): `invalid` with `reason`."""
    return _finish(model_version, status=ModelVersion.Status.INVALID, reason=reason, inspection={})


def _finish(model_version: ModelVersion, *, status: str, reason: str, inspection: dict[str, Any]) -> ModelVersion:
    """Guarded transition: only an `inspecting` version takes a verdict (a re-delivered
    task finding it done changes nothing)."""
    now = timezone.now()
    ModelVersion.objects.filter(pk=model_version.pk, status=ModelVersion.Status.INSPECTING).update(
        status=status, status_reason=reason, inspection=inspection, inspected_at=now
    )
    model_version.refresh_from_db()
    logger.info("model version %s inspected: %s %s", model_version.pk, model_version.status, reason)
    return model_version
