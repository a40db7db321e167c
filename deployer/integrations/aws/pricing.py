"""The AWS Price List API: on-demand hourly prices of SageMaker hosting instances.

The API answers in a few regions only (us-east-1 among them) and prices every region
from there, so its client is made for us-east-1 whatever AWS_REGION says. moto does not
implement it: tests price from the bundled table (deployer/pricing/).
"""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings

from deployer.integrations.aws.client import _client, raises_aws_error

API_REGION = "us-east-1"


@raises_aws_error
def sagemaker_hosting_hourly(*, region: str, instance_type: str) -> Decimal | None:
    """The on-demand price per hour of one ``instance_type`` hosting instance in
    ``region``, in USD; None when the API lists none."""
    # One attempt: the bundled table stands in at once, where retries would hold a page.
    client = _client("pricing", API_REGION, settings.AWS_ENDPOINT_URL, 1)
    filters = {"regionCode": region, "instanceName": instance_type, "component": "Hosting"}
    answer = client.get_products(
        ServiceCode="AmazonSageMaker",
        Filters=[{"Type": "TERM_MATCH", "Field": name, "Value": value} for name, value in filters.items()],
        MaxResults=10,
    )
    for item in answer.get("PriceList", []):
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if dimension.get("unit", "").lower().startswith("hr") and usd and Decimal(usd) > 0:
                    return Decimal(usd)
    return None
