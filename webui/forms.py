"""Form parsing for the dashboard; rules beyond "present and well-formed" live in services."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from deployer.models import Endpoint


class UploadForm(forms.Form):
    name = forms.CharField(max_length=63)
    file = forms.FileField(allow_empty_file=True)
    sample = forms.FileField(required=False, allow_empty_file=True)
    packages = forms.CharField(required=False, max_length=1000)

    @classmethod
    def refused(cls, field: str, message: str) -> UploadForm:
        """A form showing only ``message`` on ``field``: for an upload refused while its body
        was read (too large, an unexpected file field), whose fields cannot be read back."""
        form = cls()
        form.cleaned_data = {}
        form.add_error(field, message)
        return form


class DeployForm(forms.Form):
    name = forms.CharField(max_length=63)
    target = forms.ChoiceField(choices=Endpoint.Target.choices, initial=Endpoint.Target.LOCAL)
    options = forms.CharField(required=False, max_length=10_000)
    public = forms.BooleanField(required=False)

    def clean_options(self) -> dict[str, Any]:
        text = self.cleaned_data["options"].strip()
        if not text:
            return {}
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Options must be a JSON object: {exc}.") from exc
        if not isinstance(options, dict):
            raise forms.ValidationError('Options must be a JSON object, e.g. {"workers": 2}.')
        return options


class InvokeForm(forms.Form):
    CONTENT_TYPES = [("text/csv", "CSV"), ("application/json", "JSON")]

    payload = forms.CharField(strip=False, max_length=6 * 1024 * 1024)
    content_type = forms.ChoiceField(choices=CONTENT_TYPES)


class ShadowForm(forms.Form):
    model_version = forms.IntegerField(label="Shadow version")
    sample_percent = forms.IntegerField(label="Sample percent", min_value=1, max_value=100, initial=10)
    duration = forms.CharField(label="Duration", max_length=16, initial="2h")
