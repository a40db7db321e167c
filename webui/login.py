"""Signing in to the dashboard and the admin, throttled (deployer/services/login_throttle.py).

A locked username or address is answered 429 with Retry-After and one message whether
or not the username exists; the password is then not checked, so the right one is
refused too. When the failure counters cannot be reached, 503 (fail closed).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import HttpResponse

from deployer.services.login_throttle import (
    SignInRefused,
    client_address,
    login_failure_record,
    login_success_record,
    login_throttle_check,
)


class ThrottledAuthentication(AuthenticationForm):
    """AuthenticationForm whose password check goes through the sign-in throttle."""

    # Set when the attempt was refused by the throttle: (status, Retry-After seconds).
    refusal: tuple[int, int] | None = None

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return self.cleaned_data
        address = client_address(self.request.META if self.request else {})
        try:
            login_throttle_check(username=username, address=address)
            self.user_cache = authenticate(self.request, username=username, password=password)
            if self.user_cache is None:
                login_failure_record(username=username, address=address)
                raise self.get_invalid_login_error()
            login_success_record(username=username)
        except SignInRefused as exc:
            self.refusal = (exc.status, exc.retry_after)
            raise forms.ValidationError(exc.message, code=exc.code) from None
        self.confirm_login_allowed(self.user_cache)
        return self.cleaned_data


class ThrottledAdminAuthentication(ThrottledAuthentication, AdminAuthenticationForm):
    """The admin's sign-in (staff only), through the same throttle; the admin's own view
    answers its refusals 200 with the same message."""


class ThrottledLoginView(LoginView):
    form_class = ThrottledAuthentication

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if form.refusal is not None:
            response.status_code, retry_after = form.refusal
            response["Retry-After"] = str(retry_after)
        return response
