"""What an endpoint costs: an estimate per hour and per month from its configuration,
unit prices (deployer/pricing/, or the AWS Price List API) and its observed traffic.

Counted (docs/cost.md): SageMaker instances (type x count, or the autoscaling range's
minimum and maximum), serverless compute (memory x invocations x duration), the public
API (API Gateway and Lambda requests, Lambda duration), the model data in S3 and the
serving image in ECR. Local endpoints cost no money; their estimate shows the memory and
CPU they reserve instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from deployer.integrations.aws import cloudwatch, pricing
from deployer.integrations.aws.client import AwsConfigurationError, AwsError
from deployer.models import Endpoint, ExternalResource
from deployer.pricing import DEFAULT_REGION, Prices, bundled_prices
from deployer.targets.local.runtime import DEFAULT_MEMORY_MB
from deployer.targets.sagemaker.names import endpoint_name
from deployer.targets.sagemaker.options import DEFAULTS as SAGEMAKER_DEFAULTS

logger = logging.getLogger(__name__)

# AWS's own convention for a month of an always-on resource.
HOURS_PER_MONTH = Decimal(730)
GB = Decimal(1024**3)
MILLION = Decimal(1_000_000)
# The public API's Lambda function (deployer/integrations/aws/lambda_.py: MemorySize=256).
LAMBDA_MEMORY_GB = Decimal(256) / Decimal(1024)
# Traffic is what CloudWatch counted over the last TRAFFIC_DAYS, taken as a month's.
TRAFFIC_DAYS = 30
# Prices change a few times a year; traffic within the hour is close enough for an estimate.
PRICE_CACHE_SECONDS = 24 * 3600
TRAFFIC_CACHE_SECONDS = 3600
# After a failure, the fallback is kept this long before AWS is asked again.
FAILURE_CACHE_SECONDS = 600
SHOWN = Decimal("0.000001")


@dataclass(frozen=True)
class Traffic:
    """Requests in a month and their mean duration, and where the figures come from."""

    requests_per_month: Decimal
    mean_duration_ms: Decimal
    note: str


NO_TRAFFIC = Traffic(Decimal(0), Decimal(0), "no traffic observed")


@dataclass(frozen=True)
class CostLine:
    """One billed item. ``monthly_max`` is the autoscaling maximum's (None: no range)."""

    item: str
    monthly: Decimal
    detail: str
    monthly_max: Decimal | None = None


@dataclass(frozen=True)
class CostEstimate:
    currency: str
    source: str
    priced_at: str
    breakdown: list[CostLine] = field(default_factory=list)
    # Local endpoints: what the container reserves on this server.
    reservation: dict[str, Any] | None = None

    @property
    def monthly(self) -> Decimal:
        return sum((line.monthly for line in self.breakdown), Decimal(0))

    @property
    def monthly_max(self) -> Decimal | None:
        if all(line.monthly_max is None for line in self.breakdown):
            return None
        return sum(
            (line.monthly if line.monthly_max is None else line.monthly_max for line in self.breakdown), Decimal(0)
        )

    @property
    def hourly(self) -> Decimal:
        return self.monthly / HOURS_PER_MONTH

    @property
    def hourly_max(self) -> Decimal | None:
        top = self.monthly_max
        return None if top is None else top / HOURS_PER_MONTH

    def as_dict(self) -> dict[str, Any]:
        """What REST and the dashboard show: amounts rounded to a millionth."""
        return {
            "hourly": _shown(self.hourly),
            "monthly": _shown(self.monthly),
            "hourly_max": None if self.hourly_max is None else _shown(self.hourly_max),
            "monthly_max": None if self.monthly_max is None else _shown(self.monthly_max),
            "currency": self.currency,
            "source": self.source,
            "priced_at": self.priced_at,
            "breakdown": [
                {
                    "item": line.item,
                    "monthly": _shown(line.monthly),
                    "monthly_max": None if line.monthly_max is None else _shown(line.monthly_max),
                    "detail": line.detail,
                }
                for line in self.breakdown
            ],
            "reservation": self.reservation,
        }


def _shown(amount: Decimal) -> float:
    return float(amount.quantize(SHOWN))


def endpoint_cost_estimate(
    *, endpoint: Endpoint, prices: Prices | None = None, traffic: Traffic | None = None
) -> CostEstimate:
    """The endpoint's estimated cost. ``prices`` and ``traffic`` are looked up (cached)
    when not given; tests give both."""
    if endpoint.status == Endpoint.Status.DELETED:
        # Teardown removed what billed.
        return CostEstimate("USD", "deleted: nothing left to bill", timezone.now().date().isoformat())
    if endpoint.target == Endpoint.Target.LOCAL:
        return _local_estimate(endpoint)
    options = {**SAGEMAKER_DEFAULTS, **endpoint.options}
    prices = prices or region_prices(_region(endpoint))
    serverless = options.get("serverless")
    if traffic is None:
        traffic = endpoint_traffic(endpoint) if serverless or endpoint.public else NO_TRAFFIC
    # A stopped endpoint has no instances (its SageMaker endpoint is deleted); what its stop
    # keeps (model data, image, public API) is still priced.
    lines = [] if endpoint.status in Endpoint.ASLEEP else [_compute_line(options, prices, traffic)]
    if endpoint.public:
        lines.append(_public_api_line(prices, traffic))
    lines.extend(_storage_lines(endpoint, prices))
    return CostEstimate(prices.currency, prices.source, prices.priced_at, lines)


def _local_estimate(endpoint: Endpoint) -> CostEstimate:
    if endpoint.status in Endpoint.ASLEEP:
        # No container runs: nothing is reserved.
        return CostEstimate("USD", "local target: no charge", timezone.now().date().isoformat(), [], {})
    reservation = {
        "memory_mb": int(endpoint.options.get("memory_mb", DEFAULT_MEMORY_MB)),
        # One core per R worker (deployer/targets/local/target.py).
        "cpus": int(endpoint.options.get("workers", 1)),
    }
    return CostEstimate("USD", "local target: no charge", timezone.now().date().isoformat(), [], reservation)


def _compute_line(options: dict[str, Any], prices: Prices, traffic: Traffic) -> CostLine:
    serverless = options.get("serverless")
    if serverless:
        memory_gb = Decimal(int(serverless.get("memory_mb", 2048))) / Decimal(1024)
        seconds = traffic.requests_per_month * traffic.mean_duration_ms / 1000
        return CostLine(
            "SageMaker serverless inference",
            seconds * memory_gb * prices.serverless_gb_second,
            f"{memory_gb} GB x {traffic.requests_per_month} requests x {traffic.mean_duration_ms} ms "
            f"x {prices.serverless_gb_second}/GB-second ({traffic.note})",
        )
    instance_type = str(options["instance_type"])
    hourly = prices.instance_hourly.get(instance_type)
    if hourly is None:
        return CostLine(f"SageMaker {instance_type}", Decimal(0), f"no price known for {instance_type}: not counted")
    scaling = options.get("autoscaling")
    if scaling:
        low, high = int(scaling["min"]), int(scaling["max"])
        return CostLine(
            f"SageMaker {instance_type}",
            hourly * low * HOURS_PER_MONTH,
            f"{low} to {high} instances x {hourly}/hour x {HOURS_PER_MONTH} hours (autoscaling)",
            monthly_max=hourly * high * HOURS_PER_MONTH,
        )
    count = int(options["instance_count"])
    return CostLine(
        f"SageMaker {instance_type}",
        hourly * count * HOURS_PER_MONTH,
        f"{count} x {hourly}/hour x {HOURS_PER_MONTH} hours",
    )


def _public_api_line(prices: Prices, traffic: Traffic) -> CostLine:
    millions = traffic.requests_per_month / MILLION
    requests = millions * (prices.apigateway_per_million + prices.lambda_per_million)
    # The function waits for the model's answer: it runs as long as the invocation.
    duration = traffic.requests_per_month * traffic.mean_duration_ms / 1000 * LAMBDA_MEMORY_GB
    return CostLine(
        "Public API (API Gateway + Lambda)",
        requests + duration * prices.lambda_gb_second,
        f"{traffic.requests_per_month} requests x ({prices.apigateway_per_million} + {prices.lambda_per_million})"
        f"/million + {LAMBDA_MEMORY_GB} GB x {traffic.mean_duration_ms} ms x {prices.lambda_gb_second}/GB-second "
        f"({traffic.note})",
    )


def _storage_lines(endpoint: Endpoint, prices: Prices) -> list[CostLine]:
    lines = []
    if endpoint.model_version is not None:
        size = Decimal(endpoint.model_version.size)
        lines.append(
            CostLine(
                "Model data (S3)",
                size / GB * prices.s3_gb_month,
                f"{size} bytes x {prices.s3_gb_month}/GB-month",
            )
        )
    images = getattr(endpoint, "live_images", None)  # prefetched by priced_endpoints
    if images is None:
        images = list(ExternalResource.objects.of_endpoint(endpoint, ExternalResource.Kind.ECR_IMAGE).live())
    sizes = [image.details.get("size_bytes") for image in images]
    known = sum(Decimal(size) for size in sizes if isinstance(size, int))
    if sizes:
        detail = f"{known} bytes x {prices.ecr_gb_month}/GB-month"
        if not all(isinstance(size, int) for size in sizes):
            detail += " (an image's size is not recorded: not counted)"
        lines.append(CostLine("Serving image (ECR)", known / GB * prices.ecr_gb_month, detail))
    return lines


def _region(endpoint: Endpoint) -> str:
    return str(endpoint.runtime.get("region") or settings.AWS_REGION or DEFAULT_REGION)


# This process's copy of each region's prices, so a list of 50 rows asks Redis once.
_memo: dict[str, tuple[float, Prices]] = {}
MEMO_SECONDS = 60


def region_prices(region: str) -> Prices:
    """Unit prices in ``region``: the bundled table's, with the instance prices the Price
    List API gives when it answers (cached in the Django cache for a day)."""
    memo = _memo.get(region)
    if memo is not None and memo[0] > time.monotonic():
        return memo[1]
    prices = _region_prices(region)
    _memo[region] = (time.monotonic() + MEMO_SECONDS, prices)
    return prices


def _region_prices(region: str) -> Prices:
    table = bundled_prices(region)
    key = f"rdeploy:cost:prices:{region}"
    cached = _cache_get(key)
    if cached is None:
        cached = _ask_price_list(region, table)
        _cache_set(key, cached, PRICE_CACHE_SECONDS if cached.get("hourly") else FAILURE_CACHE_SECONDS)
    hourly = {name: Decimal(price) for name, price in (cached.get("hourly") or {}).items()}
    if not hourly:
        return table
    return table.with_instance_prices(hourly, source="AWS Price List API", priced_at=str(cached["priced_at"]))


def _ask_price_list(region: str, table: Prices) -> dict[str, Any]:
    types = sorted(settings.ALLOWED_INSTANCE_TYPES | set(table.instance_hourly))
    try:
        found = {name: pricing.sagemaker_hosting_hourly(region=region, instance_type=name) for name in types}
    except (AwsError, AwsConfigurationError) as exc:
        logger.info("AWS Price List API not reachable (%s); pricing from the bundled table", exc)
        return {}
    return {
        "hourly": {name: str(price) for name, price in found.items() if price is not None},
        "priced_at": timezone.now().isoformat(timespec="seconds"),
    }


def endpoint_traffic(endpoint: Endpoint) -> Traffic:
    """Invocations over the last TRAFFIC_DAYS days (taken as a month's) and their mean
    duration, from the SageMaker endpoint's CloudWatch metrics (cached for an hour)."""
    key = f"rdeploy:cost:traffic:{endpoint.pk}"
    cached = _cache_get(key)
    if cached is None:
        cached = _observe_traffic(endpoint)
        _cache_set(key, cached, TRAFFIC_CACHE_SECONDS if "requests" in cached else FAILURE_CACHE_SECONDS)
    if "requests" not in cached:
        return Traffic(Decimal(0), Decimal(0), str(cached["note"]))
    return Traffic(Decimal(cached["requests"]), Decimal(cached["duration_ms"]), str(cached["note"]))


def _observe_traffic(endpoint: Endpoint) -> dict[str, Any]:
    if not endpoint.runtime.get("endpoint_name"):
        return {"requests": "0", "duration_ms": "0", "note": "not serving yet: no traffic"}
    end = timezone.now()
    try:
        requests, duration_ms = cloudwatch.variant_traffic(
            endpoint=str(endpoint.runtime.get("endpoint_name") or endpoint_name(endpoint)),
            variant=str(endpoint.runtime.get("variant", "AllTraffic")),
            start=end - timedelta(days=TRAFFIC_DAYS),
            end=end,
        )
    except (AwsError, AwsConfigurationError) as exc:
        return {"note": f"traffic unknown: CloudWatch did not answer ({exc})"}
    return {
        "requests": str(Decimal(requests).quantize(Decimal(1))),
        "duration_ms": str(Decimal(duration_ms or 0).quantize(Decimal("0.01"))),
        "note": f"CloudWatch, last {TRAFFIC_DAYS} days to {end.isoformat(timespec='minutes')}",
    }


def _cache_get(key: str) -> dict[str, Any] | None:
    # Redis down costs the estimate its cache, never the page.
    try:
        found = cache.get(key)
    except Exception:
        logger.warning("cost cache unavailable; asking AWS directly", exc_info=True)
        return None
    return found if isinstance(found, dict) else None


def _cache_set(key: str, value: dict[str, Any], timeout: int) -> None:
    try:
        cache.set(key, value, timeout=timeout)
    except Exception:
        logger.warning("cost cache unavailable; %s not kept", key, exc_info=True)


@dataclass(frozen=True)
class CostTotal:
    """The summed estimate of several endpoints (in the currency of the first priced)."""

    endpoints: int
    hourly: Decimal
    monthly: Decimal
    monthly_max: Decimal
    currency: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoints": self.endpoints,
            "hourly": _shown(self.hourly),
            "monthly": _shown(self.monthly),
            "monthly_max": _shown(self.monthly_max),
            "currency": self.currency,
        }


def cost_total(estimates: Iterable[CostEstimate]) -> CostTotal:
    """The sum of ``estimates``; ``monthly_max`` takes each autoscaling range at its maximum."""
    listed = list(estimates)
    monthly = sum((estimate.monthly for estimate in listed), Decimal(0))
    top = sum((estimate.monthly_max or estimate.monthly for estimate in listed), Decimal(0))
    currency = listed[0].currency if listed else "USD"
    return CostTotal(len(listed), monthly / HOURS_PER_MONTH, monthly, top, currency)


# What an estimate reads of an endpoint: lists load only these (selectors' rows defer them).
COST_FIELDS = (
    "id",
    "name",
    "owner_id",
    "target",
    "status",
    "options",
    "public",
    "runtime",
    "model_version__id",
    "model_version__size",
)


def priced_endpoints(endpoints: QuerySet[Endpoint], *fields: str) -> list[Endpoint]:
    """``endpoints`` with what their estimates read, in three queries whatever their number."""
    images = Prefetch(
        "resources",
        queryset=ExternalResource.objects.live().filter(kind=ExternalResource.Kind.ECR_IMAGE),
        to_attr="live_images",
    )
    return list(endpoints.select_related("model_version").only(*COST_FIELDS, *fields).prefetch_related(images))


def endpoint_costs(*, endpoints: Iterable[Endpoint]) -> dict[int, dict[str, Any]]:
    """Each endpoint's estimate (``as_dict``) by id: a list page's rows, priced at once."""
    listed = Endpoint.objects.filter(pk__in=[endpoint.pk for endpoint in endpoints])
    return {endpoint.pk: endpoint_cost_estimate(endpoint=endpoint).as_dict() for endpoint in priced_endpoints(listed)}


def cost_summary(*, user: Any) -> dict[str, Any]:
    """The total of the user's endpoints not deleted; for staff also the installation's,
    per owner."""
    endpoints = priced_endpoints(
        Endpoint.objects.visible_to(user).exclude(status=Endpoint.Status.DELETED).select_related("owner"),
        "owner__id",
        "owner__username",
    )
    estimates = [(endpoint, endpoint_cost_estimate(endpoint=endpoint)) for endpoint in endpoints]
    mine = cost_total(estimate for endpoint, estimate in estimates if endpoint.owner_id == user.pk)
    summary: dict[str, Any] = {"user": mine.as_dict()}
    if user.is_staff:
        owners = sorted({endpoint.owner.get_username() for endpoint, _ in estimates})
        summary["installation"] = cost_total(estimate for _, estimate in estimates).as_dict()
        summary["owners"] = [
            {
                "owner": owner,
                **cost_total(e for endpoint, e in estimates if endpoint.owner.get_username() == owner).as_dict(),
            }
            for owner in owners
        ]
    return summary
