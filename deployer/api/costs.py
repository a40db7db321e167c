"""`GET /api/v1/costs`: the estimated cost of the caller's endpoints (staff: also the
installation's, per owner), and the shape of an endpoint's `cost` (docs/cost.md)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from deployer.services.costs import cost_summary


class CostLineSerializer(serializers.Serializer[Any]):
    item = serializers.CharField()
    monthly = serializers.FloatField()
    monthly_max = serializers.FloatField(allow_null=True, help_text="At the autoscaling maximum; null without one.")
    detail = serializers.CharField(help_text="The multiplication behind the figure.")


class ReservationSerializer(serializers.Serializer[Any]):
    memory_mb = serializers.IntegerField()
    cpus = serializers.IntegerField()


class CostSerializer(serializers.Serializer[Any]):
    hourly = serializers.FloatField()
    monthly = serializers.FloatField(help_text="730 hours; storage and traffic at a month's rate.")
    hourly_max = serializers.FloatField(allow_null=True, help_text="At the autoscaling maximum; null without one.")
    monthly_max = serializers.FloatField(allow_null=True)
    currency = serializers.CharField()
    source = serializers.CharField(help_text="Where the prices come from: the AWS Price List API or the bundled table.")  # type: ignore[assignment]  # a field, popped by the metaclass
    priced_at = serializers.CharField(help_text="When the prices were read (the bundled table: its date).")
    breakdown = CostLineSerializer(many=True)
    reservation = ReservationSerializer(allow_null=True, help_text="Local endpoints: the memory and CPUs reserved.")


class CostTotalSerializer(serializers.Serializer[Any]):
    endpoints = serializers.IntegerField()
    hourly = serializers.FloatField()
    monthly = serializers.FloatField()
    monthly_max = serializers.FloatField(help_text="Every autoscaling range at its maximum.")
    currency = serializers.CharField()


class OwnerCostTotalSerializer(CostTotalSerializer):
    owner = serializers.CharField()


class CostSummarySerializer(serializers.Serializer[Any]):
    user = CostTotalSerializer(help_text="The caller's endpoints not deleted.")
    installation = CostTotalSerializer(required=False, help_text="Staff only: every endpoint.")
    owners = OwnerCostTotalSerializer(many=True, required=False, help_text="Staff only: per owner.")


class CostSummaryView(APIView):
    @extend_schema(responses=CostSummarySerializer)
    def get(self, request: Request) -> Response:
        """Estimated cost of the caller's endpoints; staff also see the installation's."""
        return Response(cost_summary(user=request.user))
