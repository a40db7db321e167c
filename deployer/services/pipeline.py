"""The deployment pipeline: persisted steps advanced by short, idempotent tasks.

A ``Deployment`` is a list of ``DeploymentStep`` rows named by its target (see
``deployer.targets.base`` for the contract a step fulfils). ``deployment_advance``:

1. claims the deployment with a conditional UPDATE (``status`` pending/running and no
   live lease) that sets ``lease_until``; "0 rows" means someone else has it;
2. runs the first unfinished step (a heartbeat thread renews the lease while it runs, so
   a step longer than the lease is never claimed twice), persists its outcome, renews the
   lease, and goes on with the next step while steps finish quickly (at most ``budget()``
   seconds per task);
3. on "wait" records ``next_check_at`` and re-enqueues itself with a countdown;
4. releases the lease.

A worker killed at any moment leaves the lease to expire; ``pipeline_reconcile`` (Celery
beat) re-enqueues every non-terminal deployment whose lease expired and whose next poll
is due, and the step runs again from the top (steps are idempotent). A permanent error,
or ``MAX_TRANSIENT_ATTEMPTS`` runs of one step, fails the deployment: the step is marked
failed first, then the target discards what this rollout created, then the deployment is
marked failed, so a crash during the cleanup resumes the cleanup. Once the step the
target names in ``switches_traffic_at`` has succeeded (``Deployment.traffic_switched_at``)
the new version serves: a later failure rolls forward instead (nothing is discarded, the
deployment succeeds with the failed step's error, the endpoint is live on the new version
and shows that error).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from deployer import task_names
from deployer.jobs import enqueue
from deployer.models import Deployment, DeploymentStep, Endpoint, LogLine, ModelVersion
from deployer.services.shadow_lifecycle import shadow_deployment_finished
from deployer.targets import get_target
from deployer.targets.base import (
    MAX_TRANSIENT_ATTEMPTS,
    PermanentStepError,
    StepContext,
    StepOutcome,
    TransientStepError,
)

logger = logging.getLogger(__name__)

FINISHED_STEP = (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED)
# Short waits are slept off inside the task instead of a round trip through the broker.
INLINE_WAIT_SECONDS = 1.0
# A scheduled poll this late means its message was lost (worker killed holding it).
OVERDUE = timedelta(seconds=5)


def lease_seconds() -> int:
    return int(settings.PIPELINE_LEASE_SECONDS)


def budget() -> float:
    """How long one task keeps running consecutive steps before it reschedules itself."""
    return lease_seconds() / 3


def deployment_start(*, endpoint: Endpoint, model_version: ModelVersion, kind: str) -> Deployment:
    """Create a deployment with its steps and enqueue it; call inside the caller's transaction."""
    target = get_target(endpoint.target)
    deployment = Deployment.objects.create(endpoint=endpoint, model_version=model_version, kind=kind)
    DeploymentStep.objects.bulk_create(
        DeploymentStep(deployment=deployment, position=position, name=name)
        for position, name in enumerate(target.steps(kind, public=endpoint.public), start=1)
    )
    Endpoint.objects.filter(pk=endpoint.pk).update(current_deployment=deployment, updated_at=timezone.now())
    endpoint.current_deployment = deployment
    _log(deployment, f"{kind.capitalize()} of {model_version} started.")
    enqueue(task_names.DEPLOYMENT_ADVANCE, deployment.pk)
    return deployment


def serving_deployment(endpoint: Endpoint) -> Deployment | None:
    """The rollout whose version serves traffic now: the last one that succeeded."""
    return (
        Deployment.objects.filter(
            endpoint=endpoint, kind__in=Deployment.ROLLOUT_KINDS, status=Deployment.Status.SUCCEEDED
        )
        .order_by("-finished_at", "-id")
        .first()
    )


class _LeaseLost(Exception):
    """Another task took the deployment over (our lease expired) or it was cancelled."""


class _Run:
    """One task's hold on one deployment, identified by its lease timestamp."""

    def __init__(self, deployment_id: int, lease: datetime) -> None:
        self.deployment_id = deployment_id
        self.lease = lease

    def renew(self) -> None:
        """Extend the lease; inside a transaction this also guards the writes around it."""
        lease = timezone.now() + timedelta(seconds=lease_seconds())
        renewed = Deployment.objects.filter(
            pk=self.deployment_id, lease_until=self.lease, status=Deployment.Status.RUNNING
        ).update(lease_until=lease)
        if not renewed:
            raise _LeaseLost
        self.lease = lease

    def release(self) -> None:
        Deployment.objects.filter(pk=self.deployment_id, lease_until=self.lease).update(lease_until=None)


class _Heartbeat:
    """Renews the lease from a thread while one step runs, however long it takes.

    Without it a step longer than the lease (unpacking a large bundle, an S3 upload, a
    runtime starting) would let the reconciler claim the deployment and run the step a
    second time concurrently, or let a delete cancel the rollout under it. The main thread
    does not touch the lease while the heartbeat runs (it is joined before the step's
    outcome is saved), and on a lost lease the heartbeat stops: the step's outcome is then
    not saved (``renew`` raises ``_LeaseLost``).
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"lease-{run.deployment_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        try:
            while not self.stopped.wait(lease_seconds() / 3):
                try:
                    self.run.renew()
                except _LeaseLost:
                    logger.warning("deployment %s: lease lost while a step ran", self.run.deployment_id)
                    return
                except DatabaseError:
                    logger.exception("deployment %s: renewing the lease failed", self.run.deployment_id)
        finally:
            # This thread's own database connection.
            connections.close_all()


def _claim(deployment_id: int) -> _Run | None:
    now = timezone.now()
    lease = now + timedelta(seconds=lease_seconds())
    claimed = (
        Deployment.objects.filter(pk=deployment_id, status__in=Deployment.ACTIVE)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .update(
            status=Deployment.Status.RUNNING,
            lease_until=lease,
            attempts=F("attempts") + 1,
            started_at=Coalesce("started_at", now),
        )
    )
    return _Run(deployment_id, lease) if claimed else None


def deployment_advance(*, deployment_id: int) -> None:
    """Advance one deployment as far as it goes quickly; safe to call any number of times."""
    run = _claim(deployment_id)
    if run is None:
        return
    try:
        _advance(run)
    except _LeaseLost:
        logger.info("deployment %s: lease lost, leaving it to its new owner", deployment_id)
    finally:
        run.release()


def _advance(run: _Run) -> None:
    deadline = time.monotonic() + budget()
    while True:
        deployment = Deployment.objects.select_related("endpoint", "model_version").get(pk=run.deployment_id)
        if deployment.is_terminal:
            return
        if deployment.kind == Deployment.Kind.DELETE and not _cancel_rollouts(deployment):
            _reschedule(deployment, 1.0)
            return
        step = deployment.steps.exclude(status__in=FINISHED_STEP).order_by("position").first()
        if step is None:
            _succeed(run, deployment)
            return
        if step.status == DeploymentStep.Status.FAILED:
            _fail(run, deployment, step, step.message)
            return
        now = timezone.now()
        if step.next_check_at and step.next_check_at > now:
            wait = (step.next_check_at - now).total_seconds()
            if wait <= INLINE_WAIT_SECONDS and time.monotonic() + wait < deadline:
                time.sleep(wait)
                continue
            _reschedule(deployment, wait)
            return
        if not _run_step(run, deployment, step):
            return
        if time.monotonic() >= deadline:
            _reschedule(deployment, 0)
            return


def _run_step(run: _Run, deployment: Deployment, step: DeploymentStep) -> bool:
    """Run one step and persist its outcome; False when the deployment stopped here."""
    target = get_target(deployment.endpoint.target)
    now = timezone.now()
    polling = step.next_check_at is not None
    with transaction.atomic():
        run.renew()
        step.status = DeploymentStep.Status.RUNNING
        step.started_at = step.started_at or now
        if not polling:
            step.attempts += 1
        step.save(update_fields=["status", "started_at", "attempts"])
        _update_endpoint_for_step(deployment, step.name, target.build_steps)
    if not polling and step.attempts == 1:
        _log(deployment, f"Step {step.name} started.")
    if step.attempts > MAX_TRANSIENT_ATTEMPTS:
        _fail(run, deployment, step, f"Step {step.name} did not complete after {MAX_TRANSIENT_ATTEMPTS} attempts.")
        return False
    ctx = StepContext(deployment=deployment, step=step, previous=serving_deployment(deployment.endpoint))
    try:
        with _Heartbeat(run):
            outcome = target.run_step(step.name, ctx)
            _pause_for_fault_tests(step, polling=polling)
    except PermanentStepError as exc:
        _fail(run, deployment, step, exc.message)
        return False
    except Exception as exc:
        message = exc.message if isinstance(exc, TransientStepError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TransientStepError):
            logger.exception("deployment %s step %s failed", deployment.pk, step.name)
        if step.attempts >= MAX_TRANSIENT_ATTEMPTS:
            _fail(run, deployment, step, f"Step {step.name} kept failing: {message}")
            return False
        retry_after = getattr(exc, "retry_after", None) or min(2**step.attempts, 60) * random.uniform(0.8, 1.2)  # noqa: S311
        with transaction.atomic():
            run.renew()
            # Counted now: the retry itself runs as a poll, which does not count.
            step.attempts += 1
            step.save(update_fields=["attempts"])
            _save_step(step, status=DeploymentStep.Status.RUNNING, message=f"Retrying: {message}", wait=retry_after)
        _log(deployment, f"Step {step.name} will be retried: {message}", level=LogLine.Level.WARNING)
        return True
    with transaction.atomic():
        run.renew()
        if outcome.kind == StepOutcome.WAIT:
            _save_step(step, status=DeploymentStep.Status.RUNNING, message=outcome.message, wait=outcome.wait_seconds)
        else:
            status = (
                DeploymentStep.Status.SKIPPED
                if outcome.kind == StepOutcome.SKIPPED
                else DeploymentStep.Status.SUCCEEDED
            )
            _save_step(step, status=status, message=outcome.message)
            if step.name == target.switches_traffic_at.get(deployment.kind) and not deployment.traffic_switched_at:
                deployment.traffic_switched_at = timezone.now()
                Deployment.objects.filter(pk=deployment.pk).update(traffic_switched_at=deployment.traffic_switched_at)
    if outcome.kind != StepOutcome.WAIT:
        _log(
            deployment,
            f"Step {step.name} {'skipped' if outcome.kind == StepOutcome.SKIPPED else 'done'}: {outcome.message}",
        )
    return True


def _save_step(step: DeploymentStep, *, status: str, message: str, wait: float | None = None) -> None:
    now = timezone.now()
    step.status = status
    step.message = message
    step.next_check_at = now + timedelta(seconds=wait) if wait is not None else None
    step.finished_at = now if status in (*FINISHED_STEP, DeploymentStep.Status.FAILED) else None
    step.save(update_fields=["status", "message", "next_check_at", "finished_at"])


def _pause_for_fault_tests(step: DeploymentStep, *, polling: bool) -> None:
    """Fault tests SIGKILL the worker here: after a step's work, before its outcome is saved.

    The line logged is how a test knows this process is inside that run of the step.
    """
    if settings.PIPELINE_FAULT_PAUSE_SECONDS:
        logger.warning(
            "fault pause: deployment %s step %s attempt %s %s pid %s",
            step.deployment_id,
            step.name,
            step.attempts,
            "poll" if polling else "run",
            os.getpid(),
        )
        time.sleep(settings.PIPELINE_FAULT_PAUSE_SECONDS)


def _update_endpoint_for_step(deployment: Deployment, step_name: str, build_steps: frozenset[str]) -> None:
    endpoint = deployment.endpoint
    if deployment.kind == Deployment.Kind.CREATE:
        status = Endpoint.Status.BUILDING if step_name in build_steps else Endpoint.Status.DEPLOYING
        allowed: tuple[str, ...] = (Endpoint.Status.PENDING, Endpoint.Status.BUILDING, Endpoint.Status.DEPLOYING)
    elif deployment.kind == Deployment.Kind.DELETE:
        status, allowed = Endpoint.Status.DELETING, tuple(Endpoint.Status)
    elif deployment.kind in (Deployment.Kind.STOP, Deployment.Kind.START):
        return  # endpoint_stop and endpoint_start set stopping and starting themselves
    else:
        status, allowed = Endpoint.Status.UPDATING, (Endpoint.Status.LIVE, Endpoint.Status.FAILED)
    if endpoint.status != status and endpoint.status in allowed:
        Endpoint.objects.filter(pk=endpoint.pk, status__in=allowed).update(status=status, updated_at=timezone.now())
        endpoint.status = status


def _succeed(run: _Run, deployment: Deployment) -> None:
    endpoint = deployment.endpoint
    now = timezone.now()
    with transaction.atomic():
        run.renew()
        Deployment.objects.filter(pk=deployment.pk).update(
            status=Deployment.Status.SUCCEEDED, finished_at=now, lease_until=None, error=""
        )
        if deployment.kind == Deployment.Kind.DELETE:
            Endpoint.objects.filter(pk=endpoint.pk).update(
                status=Endpoint.Status.DELETED, runtime={}, api_key_hash="", error="", updated_at=now
            )
            message = "Endpoint deleted."
        elif deployment.kind == Deployment.Kind.STOP:
            Endpoint.objects.filter(pk=endpoint.pk).update(
                status=Endpoint.Status.STOPPED, runtime={}, error="", updated_at=now
            )
            message = "Endpoint stopped; start it to serve again."
        elif deployment.kind in Deployment.SHADOW_KINDS:
            Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.LIVE, error="", updated_at=now)
            message = f"Shadow {deployment.model_version}: {deployment.kind.replace('_', ' ')} done."
        else:
            _serve(deployment, now=now, error="")
            message = f"{deployment.model_version} is live."
        shadow_deployment_finished(deployment, now=now)
    _log(deployment, message)


def _serve(deployment: Deployment, *, now: datetime, error: str) -> None:
    """The endpoint is live on the deployment's version; the one it replaces becomes previous."""
    endpoint = deployment.endpoint
    endpoint.refresh_from_db(fields=["model_version", "previous_model_version"])
    previous = endpoint.model_version_id
    Endpoint.objects.filter(pk=endpoint.pk).update(
        status=Endpoint.Status.LIVE,
        model_version=deployment.model_version,
        previous_model_version_id=(
            previous if previous != deployment.model_version_id else endpoint.previous_model_version_id
        ),
        error=error,
        updated_at=now,
    )


def _roll_forward(run: _Run, deployment: Deployment, step: DeploymentStep, message: str) -> None:
    """A step failed after the switch: the new version serves, so keep it and say what failed.

    Discarding would remove what serves now (the previous version no longer does). What
    the failed step left undone (e.g. stopping the previous runtime) stays recorded as a
    live resource of the endpoint, so its teardown still removes it.
    """
    now = timezone.now()
    error = f"Step {step.name} failed after traffic switched to {deployment.model_version}: {message}"
    shown = f"{deployment.model_version} serves, but step {step.name} failed after the switch: {message}"
    with transaction.atomic():
        run.renew()
        Deployment.objects.filter(pk=deployment.pk).update(
            status=Deployment.Status.SUCCEEDED, error=error, finished_at=now, lease_until=None
        )
        _serve(deployment, now=now, error=shown)
    _log(deployment, shown, level=LogLine.Level.WARNING)


def _fail(run: _Run, deployment: Deployment, step: DeploymentStep, message: str) -> None:
    endpoint = deployment.endpoint
    target = get_target(endpoint.target)
    if step.status != DeploymentStep.Status.FAILED:
        with transaction.atomic():
            run.renew()
            _save_step(step, status=DeploymentStep.Status.FAILED, message=message)
        _log(deployment, f"Step {step.name} failed: {message}", level=LogLine.Level.ERROR)
    # Unthrottled: the lines up to a failure are wanted now, and a failed endpoint's log
    # is not collected again.
    try:
        target.collect_logs(endpoint)
    except Exception:
        logger.exception("deployment %s: collecting logs failed", deployment.pk)
    if deployment.kind in Deployment.ROLLOUT_KINDS and deployment.traffic_switched_at is not None:
        _roll_forward(run, deployment, step, message)
        return
    if deployment.kind != Deployment.Kind.DELETE:
        ctx = StepContext(deployment=deployment, step=step, previous=serving_deployment(endpoint))
        try:
            target.discard(ctx)
        except Exception as exc:
            # Leave the deployment running: the reconciler retries the cleanup.
            logger.exception("deployment %s: discarding failed", deployment.pk)
            _log(deployment, f"Cleaning up the failed rollout failed, will retry: {exc}", level=LogLine.Level.WARNING)
            _reschedule(deployment, 10)
            return
    now = timezone.now()
    with transaction.atomic():
        run.renew()
        Deployment.objects.filter(pk=deployment.pk).update(
            status=Deployment.Status.FAILED, error=message, finished_at=now, lease_until=None
        )
        endpoint.refresh_from_db(fields=["model_version", "status"])
        shadow_deployment_finished(deployment, now=now, error=message)
        if deployment.kind in Deployment.BESIDE_LIVE_KINDS and endpoint.model_version_id:
            # The previous version still serves: the endpoint stays live and says what failed.
            status = Endpoint.Status.LIVE
            error = f"Deploying {deployment.model_version} failed; {endpoint.model_version} still serves. {message}"
        elif deployment.kind == Deployment.Kind.START:
            # What start would have served again is still kept: starting again may work.
            status, error = Endpoint.Status.STOPPED, f"Starting failed: {message}"
        else:
            status, error = Endpoint.Status.FAILED, message
        Endpoint.objects.filter(pk=endpoint.pk).update(status=status, error=error, updated_at=now)
    _log(deployment, f"{deployment.kind.capitalize()} failed: {message}", level=LogLine.Level.ERROR)


def _cancel_rollouts(deployment: Deployment) -> bool:
    """Before a teardown: fail the endpoint's unfinished rollouts; False while one is running."""
    now = timezone.now()
    others = Deployment.objects.filter(endpoint=deployment.endpoint, status__in=Deployment.ACTIVE).exclude(
        pk=deployment.pk
    )
    others.filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now)).update(
        status=Deployment.Status.FAILED, error="Cancelled: the endpoint is being deleted.", finished_at=now
    )
    return not others.exists()


def _reschedule(deployment: Deployment, seconds: float) -> None:
    enqueue(task_names.DEPLOYMENT_ADVANCE, deployment.pk, countdown=max(0.0, seconds))


def _log(deployment: Deployment, message: str, *, level: str = LogLine.Level.INFO) -> None:
    LogLine.objects.create(
        endpoint_id=deployment.endpoint_id,
        deployment=deployment,
        source=LogLine.Source.PIPELINE,
        level=level,
        message=message,
    )
