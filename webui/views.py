"""Dashboard views: thin adapters from requests to deployer selectors and services.

One function serves a page and its htmx fragments (`?fragment=<partial>`); polling
fragments answer 286 once nothing is in progress, which stops htmx polling.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling
from django_htmx.middleware import HtmxDetails

from deployer import selectors
from deployer.models import ApiToken, Endpoint, ModelVersion
from deployer.services.tokens import api_token_create, api_token_revoke
from webui.presentation import format_duration, inspection_summary, invoke_snippets, step_duration

ENDPOINTS_PER_PAGE = 50
MODELS_PER_PAGE = 50
LOG_LINES_PER_POLL = 200


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


@login_required
@require_GET
def model_detail(request: DashboardRequest, pk: int) -> HttpResponse:
    model_version = get_object_or_404(selectors.model_version_list(user=request.user), pk=pk)
    busy = model_version.status == ModelVersion.Status.INSPECTING
    context = {
        "model_version": model_version,
        "inspection": inspection_summary(model_version),
        "busy": busy,
        "targets": Endpoint.Target.choices,
    }
    if request.htmx and request.GET.get("fragment") == "inspection":
        return _stop_polling_unless(busy, render(request, "webui/model_detail.html#inspection", context))
    return render(request, "webui/model_detail.html", context)


# --- Endpoints -------------------------------------------------------------------------


@login_required
@require_GET
def endpoint_list(request: DashboardRequest) -> HttpResponse:
    page = Paginator(selectors.endpoint_list(user=request.user), ENDPOINTS_PER_PAGE).get_page(request.GET.get("page"))
    busy = any(selectors.endpoint_is_busy(endpoint) for endpoint in page)
    context = {"page": page, "busy": busy}
    if request.htmx and request.GET.get("fragment") == "rows":
        return _stop_polling_unless(busy, render(request, "webui/endpoint_list.html#rows", context))
    return render(request, "webui/endpoint_list.html", context)


def _endpoint_for(request: DashboardRequest, name: str) -> Endpoint:
    return get_object_or_404(
        Endpoint.objects.visible_to(request.user).select_related("model_version", "current_deployment"),
        name=name,
    )


def _overview_context(endpoint: Endpoint) -> dict[str, object]:
    now = timezone.now()
    steps = selectors.deployment_steps(deployment=endpoint.current_deployment)
    return {
        "endpoint": endpoint,
        "deployment": endpoint.current_deployment,
        "steps": [(step, format_duration(step_duration(step, now))) for step in steps],
        "busy": selectors.endpoint_is_busy(endpoint),
    }


@login_required
@require_GET
def endpoint_detail(request: DashboardRequest, name: str) -> HttpResponse:
    endpoint = _endpoint_for(request, name)
    context = _overview_context(endpoint)
    if request.htmx and request.GET.get("fragment") == "overview":
        return _stop_polling_unless(
            bool(context["busy"]), render(request, "webui/endpoint_detail.html#overview", context)
        )
    lines = selectors.log_lines_tail(endpoint=endpoint, limit=LOG_LINES_PER_POLL)
    inspection = inspection_summary(endpoint.model_version) if endpoint.model_version else None
    payload = inspection.example_payload if inspection else ""
    content_type = inspection.example_content_type if inspection else "text/csv"
    context.update(
        lines=lines,
        cursor=lines[-1].id if lines else 0,
        following=context["busy"],
        payload=payload,
        content_type=content_type,
        snippets=invoke_snippets(endpoint, payload=payload, content_type=content_type),
        versions=selectors.model_versions_ready(user=request.user),
    )
    return render(request, "webui/endpoint_detail.html", context)


@login_required
@require_GET
def endpoint_logs(request: DashboardRequest, name: str) -> HttpResponse:
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
    lines = selectors.log_lines_after(endpoint=endpoint, after=after, limit=LOG_LINES_PER_POLL) if following else []
    more = len(lines) == LOG_LINES_PER_POLL
    busy = selectors.endpoint_is_busy(endpoint) or more
    context = {
        "endpoint": endpoint,
        "lines": lines,
        "cursor": lines[-1].id if lines else after,
        "following": following and busy,
        "paused": not following,
    }
    response = render(request, "webui/endpoint_detail.html#log-tail", context)
    return response if not following else _stop_polling_unless(busy, response)


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
