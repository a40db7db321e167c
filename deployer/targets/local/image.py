"""The rollout's serving image (deployer/serving_images.py: the model's packages on the
base, the image SageMaker would run), built by the local engine as a detached job when it
lacks it, polled, its lines streamed into the deployment's log."""

from __future__ import annotations

from django.conf import settings

from deployer.build_context import BuildContext
from deployer.integrations.containers import images
from deployer.models import LogLine
from deployer.serving_images import local_image, model_version_image_context
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome, TransientStepError
from deployer.targets.local.paths import image_build_dir

IMAGE_BUILD_POLL_SECONDS = 2.0


def runtime_image(ctx: StepContext) -> str | StepOutcome:
    """The rollout's serving image (deployer/serving_images.py: the model's packages on
    the base, the image SageMaker would run), or a wait while the local engine builds it
    (a detached job, polled; its lines stream into the deployment's log). Inspection has
    usually built it already."""
    # Rendering the context unpacks the bundle (its renv.lock): at most once per poll.
    context = None
    image = ctx.intent.get("image")
    if not image:
        context = image_context(ctx)
        image = local_image(context)
        ctx.intent["image"] = image
        ctx.save_intent()
    directory = image_build_dir(ctx.deployment)
    job = ctx.intent.get("image_build")
    if job is None:
        if images.image_present(image):
            return str(image)
        started = images.start_build(directory=directory, context=context or image_context(ctx), tags=[image])
        job = {"pid": started.pid, "ticks": started.start_ticks, "offset": 0}
        ctx.intent["image_build"] = job
        ctx.save_intent()
        ctx.log(f"Building the serving image {image}.", source=LogLine.Source.BUILD)
    state = images.job_state(images.Job(directory, "build", job["pid"], job["ticks"]))
    lines, offset = images.read_output(directory, int(job["offset"]))
    if lines:
        ctx.log_lines(lines, source=LogLine.Source.BUILD)
        ctx.intent["image_build"] = {**job, "offset": offset}
        ctx.save_intent()
    if state.running:
        return StepOutcome.wait(IMAGE_BUILD_POLL_SECONDS, "Building the serving image.")
    tail = "\n".join(images.last_output(directory))
    images.remove_job(directory)
    del ctx.intent["image_build"]
    ctx.save_intent()
    if state.exit_code == 0:
        return str(image)
    if state.exit_code is None:
        raise TransientStepError("The serving image build stopped without an exit status; starting it again.")
    raise PermanentStepError(
        f"Building the serving image failed ({settings.CONTAINER_CLI} build exited with status "
        f"{state.exit_code}). Its last lines:\n{tail}"
    )


def image_context(ctx: StepContext) -> BuildContext:
    try:
        return model_version_image_context(model_version=ctx.model_version)
    except ValueError as error:
        raise PermanentStepError(f"No image can be built for this model: {error}.") from error
