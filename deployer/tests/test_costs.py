"""Cost estimates (issue 14, docs/cost.md): figures from a fixed price table and known
traffic, each multiplication written out beside its literal expected number; REST and
the dashboard show them; the Price List API falls back to the bundled table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from deployer.integrations.aws.client import aws_client
from deployer.models import Endpoint, ExternalResource, ModelVersion
from deployer.pricing import Prices, bundled_prices
from deployer.services.costs import Traffic, endpoint_cost_estimate, region_prices
from testsupport.factories import make_endpoint, make_model_version
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db

ClientFor = Callable[[User], APIClient]
GiB = 1024**3

# Fixed here, not read from the bundled table, so a price update there changes no test.
PRICES = Prices(
    region="us-east-1",
    currency="USD",
    source="test table",
    priced_at="2025-01-15",
    instance_hourly={"ml.m5.large": Decimal("0.115")},
    serverless_gb_second=Decimal("0.00002"),
    lambda_per_million=Decimal("0.20"),
    lambda_gb_second=Decimal("0.0000166667"),
    apigateway_per_million=Decimal("3.50"),
    s3_gb_month=Decimal("0.023"),
    ecr_gb_month=Decimal("0.10"),
)
# A million requests in the month, 200 ms each.
TRAFFIC = Traffic(Decimal(1_000_000), Decimal(200), "known traffic")


def sagemaker_endpoint(owner: User, name: str, *, model_bytes: int, **fields: object) -> Endpoint:
    model = make_model_version(owner, name=name, status=ModelVersion.Status.READY)
    ModelVersion.objects.filter(pk=model.pk).update(size=model_bytes)
    model.refresh_from_db()
    return make_endpoint(
        owner, name, target=Endpoint.Target.SAGEMAKER, status=Endpoint.Status.LIVE, model_version=model, **fields
    )


def test_an_instance_endpoint_costs_its_instances_and_its_model_data(owner: User) -> None:
    endpoint = sagemaker_endpoint(
        owner, "two-m5", model_bytes=512 * 1024**2, options={"instance_type": "ml.m5.large", "instance_count": 2}
    )
    cost = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()

    # 2 instances x 0.115 USD/hour x 730 hours = 167.9 USD/month
    # model data: 0.5 GB x 0.023 USD/GB-month = 0.0115 USD/month
    # month: 167.9 + 0.0115 = 167.9115; hour: 167.9115 / 730 = 0.2300157... -> 0.230016
    assert [(line["item"], line["monthly"]) for line in cost["breakdown"]] == [
        ("SageMaker ml.m5.large", 167.9),
        ("Model data (S3)", 0.0115),
    ]
    assert cost["monthly"] == 167.9115
    assert cost["hourly"] == 0.230016
    assert (cost["hourly_max"], cost["monthly_max"]) == (None, None)
    assert (cost["currency"], cost["source"], cost["priced_at"]) == ("USD", "test table", "2025-01-15")


def test_an_autoscaling_endpoint_costs_a_range_from_its_minimum_to_its_maximum(owner: User) -> None:
    endpoint = sagemaker_endpoint(
        owner,
        "scaling",
        model_bytes=GiB,
        options={"instance_type": "ml.m5.large", "autoscaling": {"min": 1, "max": 4, "target_invocations": 100}},
    )
    cost = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()

    # minimum: 1 x 0.115 x 730 = 83.95, plus 1 GB x 0.023 = 0.023 -> 83.973 USD/month
    # maximum: 4 x 0.115 x 730 = 335.8, plus 0.023 -> 335.823 USD/month
    # per hour: 83.973 / 730 = 0.1150315... -> 0.115032; 335.823 / 730 = 0.4600315... -> 0.460032
    assert cost["breakdown"][0]["monthly"] == 83.95
    assert cost["breakdown"][0]["monthly_max"] == 335.8
    assert (cost["monthly"], cost["monthly_max"]) == (83.973, 335.823)
    assert (cost["hourly"], cost["hourly_max"]) == (0.115032, 0.460032)


def test_a_public_serverless_endpoint_costs_its_traffic(owner: User) -> None:
    endpoint = sagemaker_endpoint(
        owner,
        "serverless",
        model_bytes=GiB,
        public=True,
        options={"serverless": {"memory_mb": 2048, "max_concurrency": 5}},
    )
    cost = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()

    # serverless: 1,000,000 requests x 0.2 s x 2 GB = 400,000 GB-s x 0.00002 = 8.00 USD/month
    # public API: 1 million x (3.50 + 0.20) = 3.70, plus Lambda's duration
    #   1,000,000 x 0.2 s x 0.25 GB = 50,000 GB-s x 0.0000166667 = 0.833335 -> 4.533335 USD/month
    # model data: 1 GB x 0.023 = 0.023
    # month: 8 + 4.533335 + 0.023 = 12.556335; hour: 12.556335 / 730 = 0.0172004... -> 0.0172
    assert [(line["item"], line["monthly"]) for line in cost["breakdown"]] == [
        ("SageMaker serverless inference", 8.0),
        ("Public API (API Gateway + Lambda)", 4.533335),
        ("Model data (S3)", 0.023),
    ]
    assert cost["monthly"] == 12.556335
    assert cost["hourly"] == 0.0172


def test_the_serving_image_costs_its_recorded_size(owner: User) -> None:
    endpoint = sagemaker_endpoint(owner, "imaged", model_bytes=0)
    ExternalResource.objects.create(
        endpoint=endpoint,
        target="sagemaker",
        kind=ExternalResource.Kind.ECR_IMAGE,
        identifier="repo:tag",
        details={"size_bytes": 2 * GiB},
    )
    lines = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()["breakdown"]

    # 2 GB x 0.10 USD/GB-month = 0.20 USD/month
    assert ("Serving image (ECR)", 0.2) in [(line["item"], line["monthly"]) for line in lines]


def test_a_local_endpoint_costs_nothing_and_shows_its_reservation(owner: User) -> None:
    endpoint = make_endpoint(owner, "local-one", options={"memory_mb": 1024, "workers": 2})
    cost = endpoint_cost_estimate(endpoint=endpoint).as_dict()

    assert (cost["hourly"], cost["monthly"], cost["breakdown"]) == (0.0, 0.0, [])
    assert cost["reservation"] == {"memory_mb": 1024, "cpus": 2}


def test_prices_come_from_the_bundled_table_when_the_price_list_api_does_not_answer(aws: MotoServer) -> None:
    # moto implements no Price List API: the call fails, the table stands in, dated.
    cache.delete("rdeploy:cost:prices:eu-west-1")
    prices = region_prices("eu-west-1")

    assert prices.source == "bundled price table"
    assert prices.priced_at == bundled_prices("eu-west-1").priced_at
    assert prices.instance_hourly["ml.m5.large"] == Decimal("0.128")


def test_a_region_missing_from_the_table_is_priced_as_us_east_1_and_says_so() -> None:
    prices = bundled_prices("ap-southeast-2")

    assert prices.instance_hourly == bundled_prices("us-east-1").instance_hourly
    assert "us-east-1 prices; ap-southeast-2 not listed" in prices.source


def test_rest_and_the_dashboard_show_the_cost_from_cloudwatch_traffic(
    aws: MotoServer, owner: User, colleague: User, staff: User, api_client_for: ClientFor
) -> None:
    endpoint = sagemaker_endpoint(
        owner,
        "observed",
        model_bytes=GiB,
        public=True,
        options={"serverless": {"memory_mb": 2048, "max_concurrency": 5}},
        runtime={"endpoint_name": "rdeploy-observed", "variant": "AllTraffic", "region": "us-east-1"},
    )
    make_endpoint(colleague, "theirs", options={"memory_mb": 512, "workers": 1})
    dimensions = [{"Name": "EndpointName", "Value": "rdeploy-observed"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    yesterday = timezone.now() - timedelta(days=1)
    aws_client("cloudwatch").put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[
            {"MetricName": "Invocations", "Dimensions": dimensions, "Timestamp": yesterday, "Value": 2_000_000},
            # microseconds: 200 ms
            {"MetricName": "ModelLatency", "Dimensions": dimensions, "Timestamp": yesterday, "Value": 200_000},
        ],
    )
    cache.delete(f"rdeploy:cost:traffic:{endpoint.pk}")

    cost = api_client_for(owner).get("/api/v1/endpoints/observed").json()["cost"]

    # bundled us-east-1 prices (moto has no Price List API), 2,000,000 requests at 200 ms:
    # serverless: 2,000,000 x 0.2 s x 2 GB = 800,000 GB-s x 0.00002 = 16.00
    # public API: 2 x (3.50 + 0.20) = 7.40, plus 2,000,000 x 0.2 s x 0.25 GB = 100,000 GB-s
    #   x 0.0000166667 = 1.66667 -> 9.06667
    # model data: 1 GB x 0.023 = 0.023
    # month: 16 + 9.06667 + 0.023 = 25.08967; hour: 25.08967 / 730 = 0.0343694... -> 0.034369
    assert cost["source"] == "bundled price table"
    assert [line["monthly"] for line in cost["breakdown"]] == [16.0, 9.06667, 0.023]
    assert (cost["monthly"], cost["hourly"]) == (25.08967, 0.034369)
    assert "CloudWatch, last 30 days" in cost["breakdown"][0]["detail"]

    listed = api_client_for(owner).get("/api/v1/endpoints/").json()["results"]
    assert [item["cost"]["monthly"] for item in listed] == [25.08967]

    mine = api_client_for(owner).get("/api/v1/costs").json()
    assert mine["user"] == {
        "endpoints": 1,
        "hourly": 0.034369,
        "monthly": 25.08967,
        "monthly_max": 25.08967,
        "currency": "USD",
    }
    assert "installation" not in mine
    everyone = api_client_for(staff).get("/api/v1/costs").json()
    assert everyone["user"]["endpoints"] == 0
    assert everyone["installation"]["endpoints"] == 2
    assert everyone["installation"]["monthly"] == 25.08967
    assert [(row["owner"], row["monthly"]) for row in everyone["owners"]] == [
        (colleague.username, 0.0),
        (owner.username, 25.08967),
    ]

    browser = Client()
    browser.force_login(owner)
    page = browser.get("/endpoints/observed/").content.decode()
    assert "0.0344 USD/hour, 25.09 USD/month" in page
    assert "prices: bundled price table, 2025-01-15" in page
    assert "Public API (API Gateway + Lambda): 9.0667 USD/month" in page
    listing = browser.get("/endpoints/").content.decode()
    assert "Your endpoints: 25.09 USD/month estimated (1 endpoint)." in listing


def test_a_deleted_endpoint_costs_nothing(owner: User) -> None:
    endpoint = sagemaker_endpoint(owner, "gone", model_bytes=GiB, options={"instance_type": "ml.m5.large"})
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.DELETED)
    endpoint.refresh_from_db()
    cost = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()

    assert (cost["monthly"], cost["breakdown"], cost["reservation"]) == (0.0, [], None)


def test_the_endpoints_page_prices_its_rows_in_queries_that_do_not_grow_with_them(owner: User) -> None:
    browser = Client()
    browser.force_login(owner)

    def queries_with(count: int) -> int:
        for number in range(Endpoint.objects.count(), count):
            sagemaker_endpoint(owner, f"row-{number}", model_bytes=GiB, options={"instance_type": "ml.m5.large"})
        with CaptureQueriesContext(connection) as queries:
            assert "USD/month" in browser.get("/endpoints/").content.decode()
        return len(queries)

    assert queries_with(2) == queries_with(6)


def test_a_stopped_endpoint_costs_only_what_its_stop_keeps(owner: User) -> None:
    endpoint = sagemaker_endpoint(
        owner, "asleep", model_bytes=512 * 1024**2, options={"instance_type": "ml.m5.large", "instance_count": 2}
    )
    endpoint.status = Endpoint.Status.STOPPED
    cost = endpoint_cost_estimate(endpoint=endpoint, prices=PRICES, traffic=TRAFFIC).as_dict()
    local = make_endpoint(owner, "local-asleep", status=Endpoint.Status.STOPPED, options={"memory_mb": 1024})

    # No instances while stopped: only the kept model data.
    assert [(line["item"], line["monthly"]) for line in cost["breakdown"]] == [("Model data (S3)", 0.0115)]
    assert endpoint_cost_estimate(endpoint=local).as_dict()["reservation"] == {}
