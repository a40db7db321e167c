"""AWS unit prices: the bundled table (aws-prices.json, dated, with its sources), the
fallback when the Price List API cannot be asked and what tests price with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("aws-prices.json")
# The table's prices stand in for a region it does not list (marked in the source).
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Prices:
    """Unit prices in one region, and where they come from (shown beside every estimate)."""

    region: str
    currency: str
    source: str
    priced_at: str
    instance_hourly: dict[str, Decimal] = field(default_factory=dict)
    serverless_gb_second: Decimal = Decimal(0)
    lambda_per_million: Decimal = Decimal(0)
    lambda_gb_second: Decimal = Decimal(0)
    apigateway_per_million: Decimal = Decimal(0)
    s3_gb_month: Decimal = Decimal(0)
    ecr_gb_month: Decimal = Decimal(0)

    def with_instance_prices(self, hourly: dict[str, Decimal], *, source: str, priced_at: str) -> Prices:
        return replace(self, instance_hourly={**self.instance_hourly, **hourly}, source=source, priced_at=priced_at)


@cache
def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(TABLE_PATH.read_text())
    return table


def bundled_prices(region: str) -> Prices:
    """The table's prices for ``region`` (us-east-1's, said so, for a region it lacks)."""
    table = _table()
    listed = region in table["regions"]
    row = table["regions"][region if listed else DEFAULT_REGION]
    source = "bundled price table" if listed else f"bundled price table ({DEFAULT_REGION} prices; {region} not listed)"
    return Prices(
        region=region,
        currency=table["currency"],
        source=source,
        priced_at=table["as_of"],
        instance_hourly={name: Decimal(price) for name, price in row["sagemaker_instance_hourly"].items()},
        serverless_gb_second=Decimal(row["sagemaker_serverless_gb_second"]),
        lambda_per_million=Decimal(row["lambda_per_million_requests"]),
        lambda_gb_second=Decimal(row["lambda_gb_second"]),
        apigateway_per_million=Decimal(row["apigateway_rest_per_million_requests"]),
        s3_gb_month=Decimal(row["s3_standard_gb_month"]),
        ecr_gb_month=Decimal(row["ecr_gb_month"]),
    )
