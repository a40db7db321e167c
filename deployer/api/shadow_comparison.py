"""The shadow comparison as REST shows it (``GET /api/v1/endpoints/<name>/shadow``):
deployer/services/shadow_comparison.py says what each figure is."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class ConfusionSerializer(serializers.Serializer[Any]):
    labels = serializers.ListField(child=serializers.CharField(), help_text="Sorted; the most frequent.")
    others = serializers.BooleanField(help_text="When true, a last row and column add up every other label.")
    counts = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="counts[i][j]: rows the live version labelled i and the shadow j.",
    )


class HistogramSerializer(serializers.Serializer[Any]):
    edges = serializers.ListField(child=serializers.FloatField(), help_text="Bin edges, one more than counts.")
    counts = serializers.ListField(child=serializers.IntegerField(), help_text="Differences (shadow - live) per bin.")


class ErrorCountSerializer(serializers.Serializer[Any]):
    message = serializers.CharField()
    count = serializers.IntegerField()


class LatencySerializer(serializers.Serializer[Any]):
    p50 = serializers.FloatField(allow_null=True, help_text="Milliseconds.")
    p99 = serializers.FloatField(allow_null=True, help_text="Milliseconds.")


class ShadowComparisonSerializer(serializers.Serializer[Any]):
    """deployer/services/shadow_comparison.py says what each figure is."""

    kind = serializers.ChoiceField(choices=["", "class", "numeric", "probabilities", "other"])
    requests = serializers.IntegerField(help_text="Paired requests whose live answer was 200.")
    live_failed = serializers.IntegerField(help_text="Pairs left out: the live answer was not 200.")
    compared_requests = serializers.IntegerField()
    rows_compared = serializers.IntegerField()
    rows_unmatched = serializers.IntegerField()
    copies_sent = serializers.IntegerField()
    copies_dropped = serializers.IntegerField()
    agreed = serializers.IntegerField(allow_null=True)
    agreement_rate = serializers.FloatField(allow_null=True)
    confusion = ConfusionSerializer(allow_null=True)
    mean_abs_difference = serializers.FloatField(allow_null=True)
    max_abs_difference = serializers.FloatField(allow_null=True)
    histogram = HistogramSerializer(allow_null=True)
    shadow_errors = serializers.IntegerField()
    error_rate = serializers.FloatField(allow_null=True)
    top_errors = ErrorCountSerializer(many=True, help_text="Shadow errors by message, the most frequent first.")
    live_latency = LatencySerializer()
    shadow_latency = LatencySerializer()
