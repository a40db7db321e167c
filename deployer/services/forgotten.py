"""What still costs money that nobody seems to need (issue 14, ``manage.py rdeploy_gc``):
endpoints stopped for longer than ``RDEPLOY_GC_STOPPED_AFTER`` and serving images no
endpoint uses, each with the monthly cost it still has (storage; docs/cost.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone

from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.pricing import DEFAULT_REGION
from deployer.services.costs import GB, endpoint_cost_estimate, region_prices


@dataclass(frozen=True)
class Forgotten:
    kind: str  # "stopped endpoint" or "unused image"
    name: str
    since: datetime
    monthly: Decimal
    currency: str


def forgotten_report(*, now: datetime | None = None) -> list[Forgotten]:
    """Endpoints stopped since before ``now - GC_STOPPED_AFTER`` (what their stop kept:
    model data, image, public API) and images of no endpoint that is not deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.GC_STOPPED_AFTER_DAYS)
    found = []
    stopped = Endpoint.objects.filter(status=Endpoint.Status.STOPPED).annotate(
        stopped_at=Max(
            "deployments__finished_at",
            filter=Q(deployments__kind=Deployment.Kind.STOP, deployments__status=Deployment.Status.SUCCEEDED),
        )
    )
    for endpoint in stopped.filter(stopped_at__lt=cutoff).select_related("model_version").order_by("name"):
        cost = endpoint_cost_estimate(endpoint=endpoint)
        found.append(Forgotten("stopped endpoint", endpoint.name, endpoint.stopped_at, cost.monthly, cost.currency))
    prices = region_prices(settings.AWS_REGION or DEFAULT_REGION)
    images = ExternalResource.objects.live().filter(kind=ExternalResource.Kind.ECR_IMAGE).select_related("endpoint")
    for image in images.order_by("identifier"):
        if image.endpoint is not None and image.endpoint.status != Endpoint.Status.DELETED:
            continue
        size = image.details.get("size_bytes")
        monthly = Decimal(size) / GB * prices.ecr_gb_month if isinstance(size, int) else Decimal(0)
        since = image.details.get("unused_since")
        found.append(
            Forgotten(
                "unused image",
                image.identifier,
                datetime.fromisoformat(since) if since else image.created_at,
                monthly,
                prices.currency,
            )
        )
    return found
