"""Dashboard views: thin adapters from requests to deployer selectors and services.

One function serves a page and its htmx fragments (`?fragment=<partial>`); polling
fragments answer 286 once nothing is in progress, which stops htmx polling. Every form
also works as a plain POST without JavaScript.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from typing import Any

import redis
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from deployer import selectors
from deployer.artifacts import ArtifactRejected, ArtifactTooLarge
from deployer.artifacts.uploads import HashingUploadHandler
from deployer.errors import DomainError
from deployer.models import ApiToken, Endpoint, LogLine, ModelVersion, Shadow
from deployer.services.costs import cost_summary, endpoint_costs
from deployer.services.endpoint_logs import endpoint_logs_collect
from deployer.services.endpoints import (
    EndpointConflict,
    endpoint_create,
    endpoint_delete,
    endpoint_idle_stop_notice,
    endpoint_invoke,
    endpoint_rollback,
    endpoint_rotate_key,
    endpoint_start,
    endpoint_stop,
    endpoint_stopped_idle_since,
    endpoint_update,
)
from deployer.services.model_intake import UPLOAD_FILE_FIELDS, model_version_upload
from deployer.services.shadow_comparison import shadow_comparison_shown, shadow_latest
from deployer.services.shadows import shadow_end, shadow_promote, shadow_start
from deployer.services.tokens import api_token_create, api_token_revoke
from webui.forms import DeployForm, InvokeForm, ShadowForm, UploadForm
from webui.presentation import (
    format_duration,
    inspection_summary,
    invocation_chart,
    invoke_snippets,
    shadow_panel,
    step_duration,
)

ENDPOINTS_PER_PAGE = 50
MODELS_PER_PAGE = 50
LOG_LINES_PER_POLL = 200
CHART_LOG_LINES = 5000
CHART_CACHE_SECONDS = 5
LIST_POLL_OVERLAP = timedelta(seconds=2)


class DashboardRequest(HttpRequest):
    """What views here receive: django-htmx's details, and a signed-in user (login_required)."""

    htmx: HtmxDetails
    user: User


def _stop_polling_unless(busy: bool, response: HttpResponse) -> HttpResponse:
    """Re-labels a final fragment 286 so htmx swaps it in and stops polling."""
    if busy:
        return response
    stopped = HttpResponseStopPolling(response.content)
    for header, value in response.items():
        stopped[header] = value
    return stopped


def _redirect(request: DashboardRequest, url: str) -> HttpResponse:
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_GET
def home(request: DashboardRequest) -> HttpResponse:
    return redirect("webui:endpoint_list")


# --- Models ----------------------------------------------------------------------------


@login_required
@require_GET
def model_list(request: DashboardRequest) -> HttpResponse:
    page = Paginator(selectors.model_version_list(user=request.user), MODELS_PER_PAGE).get_page(request.GET.get("page"))
    busy = any(version.status == ModelVersion.Status.INSPECTING for version in page)
    context = {"page": page, "busy": busy}
    if request.htmx and request.GET.get("fragment") == "rows":
        return _stop_polling_unless(busy, render(request, "webui/model_list.html#rows", context))
    return render(request, "webui/model_list.html", context)


def _sentence(message: str) -> str:
    """A service's refusal ("the file is ...") as a sentence for a form."""
    return f"{message[:1].upper()}{message[1:]}."


@login_required
@require_http_methods(["GET", "POST"])
@csrf_exempt  # only so the handler below is set before CSRF reads the body; checked next
def model_upload(request: DashboardRequest) -> HttpResponse:
    # The REST upload's handler: RDEPLOY_MAX_UPLOAD_BYTES for the request's files together
    # (a Content-Length that cannot fit is refused unread), the expected file fields only.
    if request.method == "POST":
        request.upload_handlers = [HashingUploadHandler(request, fields=UPLOAD_FILE_FIELDS)]
    try:
        return _model_upload(request)
    except ArtifactRejected as exc:  # by the handler, while the body is read
        form = UploadForm.refused(exc.field or "file", _sentence(exc.message))
        template = "webui/model_upload.html#upload-fields" if request.htmx else "webui/model_upload.html"
        status = 200 if request.htmx else 413 if isinstance(exc, ArtifactTooLarge) else 400
        return render(request, template, {"form": form}, status=status)


@csrf_protect
def _model_upload(request: DashboardRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            outcome = model_version_upload(
                owner=request.user,
                name=form.cleaned_data["name"],
                file=form.cleaned_data["file"],
                sample=form.cleaned_data["sample"],
                packages=form.cleaned_data["packages"],
            )
        except ArtifactRejected as exc:
            # The refusal names its field (None: the file itself); its text is only shown.
            form.add_error(exc.field or "file", _sentence(exc.message))
        else:
            if not outcome.created:
                messages.info(request, f"These bytes were already uploaded as {outcome.model_version}.")
            return _redirect(request, reverse("webui:model_detail", args=[outcome.model_version.pk]))
    status = 400 if request.method == "POST" and not request.htmx else 200
    template = "webui/model_upload.html#upload-fields" if request.htmx else "webui/model_upload.html"
    return render(request, template, {"form": form}, status=status)


def _model_context(model_version: ModelVersion, form: DeployForm | None = None) -> dict[str, Any]:
    return {
        "model_version": model_version,
        "inspection": inspection_summary(model_version),
        "busy": model_version.status == ModelVersion.Status.INSPECTING,
        "form": form or DeployForm(initial={"name": model_version.name}),
    }


@login_required
@require_GET
def model_detail(request: DashboardRequest, pk: int) -> HttpResponse:
    model_version = get_object_or_404(selectors.model_version_list(user=request.user), pk=pk)
    context = _model_context(model_version)
    if request.htmx and request.GET.get("fragment") == "inspection":
        return _stop_polling_unless(
            bool(context["busy"]), render(request, "webui/model_detail.html#inspection", context)
        )
    return render(request, "webui/model_detail.html", context)


@login_required
@require_POST
def model_deploy(request: DashboardRequest, pk: int) -> HttpResponse:
    model_version = get_object_or_404(selectors.model_version_list(user=request.user), pk=pk)
    form = DeployForm(request.POST)
    if form.is_valid():
        try:
            issued = endpoint_create(
                owner=request.user,
                name=form.cleaned_data["name"],
                model_version=model_version,
                target=form.cleaned_data["target"],
                options=form.cleaned_data["options"],
                public=form.cleaned_data["public"],
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        except DomainError as exc:  # over a quota
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            if issued.api_key:
                return render(request, "webui/api_key.html", {"endpoint": issued.endpoint, "api_key": issued.api_key})
            return redirect("webui:endpoint_detail", name=issued.endpoint.name)
    return render(request, "webui/model_detail.html", _model_context(model_version, form), status=400)


# --- Endpoints -------------------------------------------------------------------------


@login_required
@require_GET
def endpoint_list(request: DashboardRequest) -> HttpResponse:
    """The list; while a row on the page is busy, `?fragment=changes&since=<time>` sends
    only the rows changed since the previous poll (swapped in by id)."""
    page = Paginator(selectors.endpoint_list(user=request.user), ENDPOINTS_PER_PAGE).get_page(request.GET.get("page"))
    busy = any(selectors.endpoint_is_busy(endpoint) for endpoint in page)
    # Overlap polls a little: a change committed just after a poll's query still shows.
    context = {"page": page, "busy": busy, "since": (timezone.now() - LIST_POLL_OVERLAP).isoformat()}
    if request.htmx and request.GET.get("fragment") == "changes":
        since = parse_datetime(request.GET.get("since", ""))
        changed = [endpoint for endpoint in page if since is None or endpoint.updated_at > since]
        context.update(changed=changed, row_costs=endpoint_costs(endpoints=changed))
        return _stop_polling_unless(busy, render(request, "webui/endpoint_list.html#changes", context))
    context.update(row_costs=endpoint_costs(endpoints=page), costs=cost_summary(user=request.user))
    return render(request, "webui/endpoint_list.html", context)


def _endpoint_for(request: DashboardRequest, name: str) -> Endpoint:
    return get_object_or_404(
        Endpoint.objects.visible_to(request.user).select_related(
            "owner", "model_version", "previous_model_version", "current_deployment__model_version"
        ),
        name=name,
    )


def _overview_context(request: DashboardRequest, endpoint: Endpoint) -> dict[str, Any]:
    now = timezone.now()
    steps = selectors.deployment_steps(deployment=endpoint.current_deployment)
    serving = endpoint.model_version or (
        endpoint.current_deployment.model_version if endpoint.current_deployment else None
    )
    return {
        "endpoint": endpoint,
        "deployment": endpoint.current_deployment,
        "steps": [(step, format_duration(step_duration(step, now))) for step in steps],
        "busy": selectors.endpoint_is_busy(endpoint),
        # While a shadow runs the live version changes only by promoting or stopping it.
        "shadowed": Shadow.objects.filter(endpoint=endpoint, status__in=Shadow.ACTIVE).exists(),
        "idle_notice": endpoint_idle_stop_notice(endpoint, now=now),
        "stopped_idle_since": endpoint_stopped_idle_since(endpoint),
        "versions": selectors.model_versions_ready(user=request.user, name=serving.name if serving else None).exclude(
            pk=endpoint.model_version_id or 0
        ),
    }


def _shadow_context(endpoint: Endpoint) -> dict[str, Any]:
    """The shadow panel: the active or latest shadow with its comparison, and the start
    form's choices (the endpoint owner's ready versions: only those can serve it)."""
    shadow = shadow_latest(endpoint)
    return {
        "endpoint": endpoint,
        "shadow": shadow,
        "shadow_active": shadow is not None and shadow.status in Shadow.ACTIVE,
        "panel": shadow_panel(shadow_comparison_shown(shadow)) if shadow else None,
        "shadow_form": ShadowForm(),
        "shadow_versions": selectors.model_versions_ready(user=endpoint.owner)
        .filter(owner=endpoint.owner)
        .exclude(pk=endpoint.model_version_id or 0),
    }


def _endpoint_page_context(request: DashboardRequest, endpoint: Endpoint) -> dict[str, Any]:
    context = _overview_context(request, endpoint) | _shadow_context(endpoint)
    lines = selectors.log_lines_tail(endpoint=endpoint, limit=LOG_LINES_PER_POLL)
    serving = endpoint.model_version or (
        endpoint.current_deployment.model_version if endpoint.current_deployment else None
    )
    inspection = inspection_summary(serving) if serving else None
    payload = inspection.example_payload if inspection else ""
    content_type = inspection.example_content_type if inspection else "text/csv"
    context.update(
        lines=lines,
        cursor=lines[-1].id if lines else 0,
        following=context["busy"],
        invoke_form=InvokeForm(initial={"payload": payload, "content_type": content_type}),
        snippets=invoke_snippets(endpoint, payload=payload, content_type=content_type),
    )
    return context


@login_required
@require_GET
def endpoint_detail(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    fragment = request.GET.get("fragment") if request.htmx else None
    if fragment == "overview":
        context = _overview_context(request, endpoint)
        return _stop_polling_unless(
            bool(context["busy"]), render(request, "webui/endpoint_detail.html#overview", context)
        )
    if fragment == "chart":
        return HttpResponse(_chart_html(request, endpoint))
    if fragment == "shadow":
        context = _shadow_context(endpoint)
        return _stop_polling_unless(bool(context["shadow_active"]), render(request, "webui/_shadow.html", context))
    return render(request, "webui/endpoint_detail.html", _endpoint_page_context(request, endpoint))


def _cache_key(purpose: str, endpoint: Endpoint) -> str:
    # The creation time too: a name (and in tests an id) can be reused by a new endpoint.
    return f"webui:{purpose}:{endpoint.pk}:{endpoint.created_at.timestamp()}"


def _chart_html(request: DashboardRequest, endpoint: Endpoint) -> str:
    """The chart, shared by everyone looking at the endpoint for CHART_CACHE_SECONDS."""
    key = _cache_key("chart", endpoint)
    # Signed with the app's secret, for this key: the HTML is served as read, and whoever holds
    # Redis's password must not put a script in the dashboard (a bad signature is a miss).
    signer = signing.Signer(salt=key)
    html: str | None = None
    try:
        cached = cache.get(key)
    except redis.RedisError:
        cached = None  # Redis down: drawn for this request only
    if isinstance(cached, str):
        with contextlib.suppress(signing.BadSignature):
            html = signer.unsign(cached)
    if html is None:
        # The runtime's new access-log lines (throttled per endpoint by the service).
        endpoint_logs_collect(endpoint=endpoint)
        lines = selectors.runtime_log_messages(endpoint=endpoint, limit=CHART_LOG_LINES)
        html = render_to_string(
            "webui/_chart.html", {"chart": invocation_chart(lines, now=timezone.now())}, request=request
        )
        with contextlib.suppress(redis.RedisError):
            cache.set(key, signer.sign(html), timeout=CHART_CACHE_SECONDS)
    return html


@login_required
@require_GET
def endpoint_log_tail(request: DashboardRequest, name: str) -> HttpResponse:
    """Lines after the cursor, appended out of band; the tail controls carry the new cursor.

    `?follow=0` pauses (no polling element is returned); polling stops by itself (286)
    once nothing is in progress and no line is left to deliver.
    """
    endpoint = get_object_or_404(Endpoint.objects.visible_to(request.user), name=name)
    try:
        after = max(int(request.GET.get("after", "0")), 0)
    except ValueError:
        after = 0
    following = request.GET.get("follow", "1") != "0"
    lines: list[LogLine] = []
    if following:
        endpoint_logs_collect(endpoint=endpoint)
        lines = selectors.log_lines_after(endpoint=endpoint, after=after, limit=LOG_LINES_PER_POLL)
    busy = selectors.endpoint_is_busy(endpoint) or len(lines) == LOG_LINES_PER_POLL
    context = {
        "endpoint": endpoint,
        "lines": lines,
        "cursor": lines[-1].id if lines else after,
        "following": following and busy,
        "paused": not following,
    }
    response = render(request, "webui/endpoint_detail.html#log-tail", context)
    return _stop_polling_unless(busy, response) if following else response


@login_required
@require_POST
def endpoint_invoke_form(request: DashboardRequest, name: str) -> HttpResponse:
    """The test form: one request through the same gateway as the invoke URL."""
    endpoint = _endpoint_for(request, name)
    form = InvokeForm(request.POST)
    result = None
    if form.is_valid():
        started = time.perf_counter()
        result = endpoint_invoke(
            user=request.user,
            name=endpoint.name,
            body=form.cleaned_data["payload"].encode(),
            headers={"Content-Type": form.cleaned_data["content_type"], "Accept": "application/json"},
        )
        elapsed = format_duration(timedelta(seconds=time.perf_counter() - started))
        if result is None:
            return HttpResponse(status=404)
    else:
        elapsed = ""
    context = {
        "endpoint": endpoint,
        "result": result,
        "elapsed": elapsed,
        "runtime_ms": result.headers.get("X-Rdeploy-Runtime-Ms") if result else None,
        "response_text": result.body.decode("utf-8", "replace") if result else "",
        "invoke_form": form,
    }
    if request.htmx:
        return render(request, "webui/endpoint_detail.html#response", context)
    page = _endpoint_page_context(request, endpoint)
    page.update(context)
    return render(request, "webui/endpoint_detail.html", page)


@login_required
@require_POST
def endpoint_update_form(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    model_version = get_object_or_404(
        selectors.model_versions_ready(user=request.user), pk=request.POST.get("model_version") or 0
    )
    try:
        endpoint_update(endpoint=endpoint, model_version=model_version)
    except (DomainError, ValidationError) as exc:
        messages.error(request, _message(exc))
    else:
        messages.success(request, f"Updating {endpoint.name} to {model_version}; the current one serves until then.")
    return redirect("webui:endpoint_detail", name=endpoint.name)


@login_required
@require_POST
def endpoint_rollback_form(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    try:
        deployment = endpoint_rollback(endpoint=endpoint)
    except EndpointConflict as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Rolling {endpoint.name} back to {deployment.model_version}.")
    return redirect("webui:endpoint_detail", name=endpoint.name)


def _endpoint_action(request: DashboardRequest, name: str, *, action: Any, done: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    try:
        action(endpoint=endpoint)
    except EndpointConflict as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done.format(name=endpoint.name))
    return redirect("webui:endpoint_detail", name=endpoint.name)


@login_required
@require_POST
def endpoint_stop_form(request: DashboardRequest, name: str) -> HttpResponse:
    done = "Stopping {name}: what serves it is removed, the rest is kept."
    return _endpoint_action(request, name, action=endpoint_stop, done=done)


@login_required
@require_POST
def endpoint_start_form(request: DashboardRequest, name: str) -> HttpResponse:
    return _endpoint_action(request, name, action=endpoint_start, done="Starting {name} from what its stop kept.")


@login_required
@require_POST
def endpoint_shadow_start_form(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    form = ShadowForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{form.fields[field].label or field}: {' '.join(map(str, errors))}")
        return redirect("webui:endpoint_detail", name=endpoint.name)
    model_version = get_object_or_404(
        selectors.model_versions_ready(user=request.user), pk=form.cleaned_data["model_version"]
    )
    try:
        shadow = shadow_start(
            endpoint=endpoint,
            model_version=model_version,
            sample_percent=form.cleaned_data["sample_percent"],
            duration=form.cleaned_data["duration"],
        )
    except (DomainError, ValidationError) as exc:
        messages.error(request, _message(exc))
    else:
        messages.success(
            request,
            f"Starting {model_version} beside {endpoint.model_version}: it answers copies of "
            f"{shadow.sample_percent} % of live requests; callers get only the live answers.",
        )
    return redirect("webui:endpoint_detail", name=endpoint.name)


@login_required
@require_POST
def endpoint_shadow_promote_form(request: DashboardRequest, name: str) -> HttpResponse:
    done = "Promoting the shadow of {name}: it takes over through the blue/green switch."
    return _endpoint_action(request, name, action=shadow_promote, done=done)


@login_required
@require_POST
def endpoint_shadow_stop_form(request: DashboardRequest, name: str) -> HttpResponse:
    done = "Stopping the shadow of {name}; the live version is not touched."
    return _endpoint_action(request, name, action=shadow_end, done=done)


@login_required
@require_http_methods(["GET", "POST"])
def endpoint_delete_form(request: DashboardRequest, name: str) -> HttpResponse:
    """GET asks for confirmation; POST deletes."""
    endpoint = _endpoint_for(request, name)
    if request.method == "POST":
        endpoint_delete(endpoint=endpoint)
        messages.success(request, f"Deleting {endpoint.name}: stopping it and removing what it created.")
        return redirect("webui:endpoint_detail", name=endpoint.name)
    return render(request, "webui/endpoint_delete.html", {"endpoint": endpoint})


@login_required
@require_POST
def endpoint_rotate_key_form(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    try:
        key = endpoint_rotate_key(endpoint=endpoint)
    except EndpointConflict as exc:
        messages.error(request, exc.message)
        return redirect("webui:endpoint_detail", name=endpoint.name)
    return render(request, "webui/api_key.html", {"endpoint": endpoint, "api_key": key, "rotated": True})


def _message(exc: DomainError | ValidationError) -> str:
    if isinstance(exc, DomainError):
        return exc.message
    return " ".join(exc.messages)


# --- API tokens ------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: DashboardRequest) -> HttpResponse:
    issued = None
    if request.method == "POST":
        issued = api_token_create(user=request.user, name=request.POST.get("name", "").strip())
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    return render(request, "webui/token_list.html", {"tokens": tokens, "issued": issued})


@login_required
@require_POST
def token_revoke(request: DashboardRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    api_token_revoke(token=token)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("webui:token_list")
