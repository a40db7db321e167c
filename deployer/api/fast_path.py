"""The two prediction routes, answered before Django's full request handling.

Every prediction passes through `POST /e/<name>/invocations` (API key) or
`POST /api/v1/endpoints/<name>/invocations` (REST token), and the issue gives the
gateway 1 ms. Django's whole middleware stack and URL resolution cost more than the
gateway itself (sessions, CSRF, auth, messages, htmx, WhiteNoise: none of which these
requests use). So the WSGI application sends just these requests straight to the same
two views, through the middleware that does apply to them (Django's SecurityMiddleware:
HTTPS redirect, HSTS, nosniff, referrer and opener policies; CommonMiddleware:
Content-Length, refused user agents; X-Frame-Options), in settings' order, with Django's
own request object, exception handling and request signals.

Anything else goes to Django unchanged, and so does anything unusual about one of these
requests: a Host that ALLOWED_HOSTS refuses (Django answers 400), a mounted script
prefix, a session-authenticated invocation (it needs the CSRF check). A test keeps the
answers of both paths identical.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

from deployer.api.endpoints import endpoint_invocations, public_invocations

# What applies to a token or key request: HTTPS redirect, HSTS and the other security
# headers; Content-Length and refused user agents; X-Frame-Options.
APPLICABLE_MIDDLEWARE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    }
)

# Django's <slug:name> converter, as in config/urls.py and deployer/api/urls.py.
_PUBLIC = re.compile(r"/e/(?P<name>[-a-zA-Z0-9_]+)/invocations")
_TOKEN = re.compile(r"/api/v1/endpoints/(?P<name>[-a-zA-Z0-9_]+)/invocations")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class InvocationFastPath:
    """WSGI middleware: prediction requests to their views directly, the rest to Django."""

    def __init__(self, django_app: WSGIApp) -> None:
        self.django_app = django_app
        # The applicable middleware in settings' order, wrapped as Django's handler wraps it;
        # synchronous all the way (the views are), so no awaitable comes back.
        handler: Callable[[HttpRequest], Any] = convert_exception_to_response(self._dispatch)
        for path in reversed(settings.MIDDLEWARE):
            if path in APPLICABLE_MIDDLEWARE:
                handler = convert_exception_to_response(import_string(path)(handler))
        self._handle = cast(Callable[[HttpRequest], HttpResponseBase], handler)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("SCRIPT_NAME"):
            return self.django_app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if not (_PUBLIC.fullmatch(path) or (_TOKEN.fullmatch(path) and environ.get("HTTP_AUTHORIZATION"))):
            return self.django_app(environ, start_response)
        request = WSGIRequest(environ)
        try:
            request.get_host()
        except DisallowedHost:
            return self.django_app(environ, start_response)

        signals.request_started.send(sender=self.__class__, environ=environ)
        response = self._handle(request)
        # What Django's WSGIHandler does: close() runs the closers and request_finished.
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return response

    @staticmethod
    def _dispatch(request: HttpRequest) -> HttpResponseBase:
        path = request.path_info
        if match := _PUBLIC.fullmatch(path):
            return public_invocations(request, name=match["name"])
        match = _TOKEN.fullmatch(path)
        assert match is not None  # __call__ sends only these two routes here
        # Only token requests come this way; the view replaces this with the token's user.
        request.user = AnonymousUser()
        return endpoint_invocations(request, name=match["name"])
