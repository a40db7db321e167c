"""Quotas (issue 12, finding 11): the allowed SageMaker instance types and each user's limits,
on create and update, through the REST API and the dashboard. No worker runs here:
deployments are only recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from rest_framework.test import APIClient

from deployer.models import Deployment, Endpoint, ModelVersion, UserQuota
from testsupport.factories import make_model_version

pytestmark = pytest.mark.django_db

ClientFor = Callable[[User], APIClient]


def ready(owner: User) -> ModelVersion:
    return make_model_version(owner, status=ModelVersion.Status.READY)


def create(client: APIClient, owner: User, name: str, target: str = "local", **options: Any) -> Any:
    body = {"name": name, "model": ready(owner).pk, "target": target, "options": options}
    return client.post("/api/v1/endpoints/", body, format="json")


def settle(name: str) -> Endpoint:
    """The endpoint's rollout finished: live, nothing in progress (an update may start)."""
    Deployment.objects.filter(endpoint__name=name).update(status=Deployment.Status.SUCCEEDED)
    Endpoint.objects.filter(name=name).update(status=Endpoint.Status.LIVE)
    return Endpoint.objects.get(name=name)


@override_settings(QUOTA_MAX_ENDPOINTS=2)
def test_an_endpoint_over_the_users_count_is_403_naming_the_limit(owner: User, api_client_for: ClientFor) -> None:
    client = api_client_for(owner)
    assert create(client, owner, "one", memory_mb=256).status_code == 202
    assert create(client, owner, "two", memory_mb=256).status_code == 202

    refused = create(client, owner, "three", memory_mb=256)

    assert refused.status_code == 403
    assert "max_endpoints" in refused.json()["detail"]
    assert "allows 2 endpoint(s)" in refused.json()["detail"]
    assert not Endpoint.objects.filter(name="three").exists()
    # A deleted endpoint no longer counts.
    Endpoint.objects.filter(name="one").update(status=Endpoint.Status.DELETED)
    assert create(client, owner, "three", memory_mb=256).status_code == 202


@override_settings(ALLOWED_INSTANCE_TYPES=frozenset({"ml.m5.large"}))
def test_an_instance_type_the_installation_does_not_allow_is_400(owner: User, api_client_for: ClientFor) -> None:
    client = api_client_for(owner)

    refused = create(client, owner, "gpu", "sagemaker", instance_type="ml.p4d.24xlarge")

    assert refused.status_code == 400
    message = refused.json()["options"][0]
    assert "'ml.p4d.24xlarge' is not allowed" in message
    assert "RDEPLOY_ALLOWED_INSTANCE_TYPES" in message
    assert not Endpoint.objects.exists()
    assert create(client, owner, "cpu", "sagemaker", instance_type="ml.m5.large").status_code == 202


@override_settings(QUOTA_MAX_INSTANCES=4)
def test_instances_over_the_users_total_are_403_counting_the_autoscaling_maximum(
    owner: User, api_client_for: ClientFor
) -> None:
    client = api_client_for(owner)
    assert (
        create(client, owner, "a", "sagemaker", instance_count=1, autoscaling={"min": 1, "max": 3}).status_code == 202
    )

    refused = create(client, owner, "b", "sagemaker", instance_count=2)

    assert refused.status_code == 403
    assert "instances to 5; your quota is 4 (max_instances" in refused.json()["detail"]
    assert create(client, owner, "b", "sagemaker", instance_count=1).status_code == 202
    # Serverless endpoints run on no instances of the user's.
    assert create(client, owner, "c", "sagemaker", serverless={"memory_mb": 2048}).status_code == 202


@override_settings(QUOTA_MAX_LOCAL_MEMORY_MB=3072, LOCAL_MAX_MEMORY_MB=4096)
def test_local_memory_over_the_users_total_is_403(owner: User, colleague: User, api_client_for: ClientFor) -> None:
    client = api_client_for(owner)
    assert create(client, owner, "first", memory_mb=2048).status_code == 202

    refused = create(client, owner, "second", memory_mb=2048)

    assert refused.status_code == 403
    assert "memory to 4096 MiB; your quota is 3072 MiB (max_local_memory_mb)" in refused.json()["detail"]
    assert create(client, owner, "second", memory_mb=1024).status_code == 202
    # Each user has their own room.
    assert create(api_client_for(colleague), colleague, "theirs", memory_mb=2048).status_code == 202


@override_settings(QUOTA_MAX_ENDPOINTS=1, QUOTA_MAX_INSTANCES=1)
def test_a_staff_override_raises_the_limits_of_that_user_only(
    owner: User, colleague: User, api_client_for: ClientFor
) -> None:
    UserQuota.objects.create(user=owner, max_endpoints=3, max_instances=10)
    mine, theirs = api_client_for(owner), api_client_for(colleague)

    assert create(mine, owner, "big", "sagemaker", instance_count=8).status_code == 202
    assert create(mine, owner, "second", memory_mb=256).status_code == 202
    assert create(theirs, colleague, "small", "sagemaker", instance_count=2).status_code == 403
    assert create(theirs, colleague, "one", memory_mb=256).status_code == 202
    assert create(theirs, colleague, "two", memory_mb=256).status_code == 403


def test_staff_edit_a_users_quota_in_the_admin(owner: User, staff: User) -> None:
    # Django's model permissions: superusers have them, other staff are given them.
    staff.user_permissions.add(*Permission.objects.filter(codename__endswith="_userquota"))
    client = Client()
    client.force_login(staff)

    response = client.post(
        "/admin/deployer/userquota/add/",
        {"user": owner.pk, "max_endpoints": "7", "max_instances": "", "max_local_memory_mb": ""},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    quota = UserQuota.objects.get(user=owner)
    assert (quota.max_endpoints, quota.max_instances) == (7, None)


def test_an_update_that_would_exceed_a_lowered_quota_is_refused_and_changes_nothing(
    owner: User, api_client_for: ClientFor
) -> None:
    client = api_client_for(owner)
    assert create(client, owner, "fleet", "sagemaker", instance_count=3).status_code == 202
    before = settle("fleet")
    deployments = Deployment.objects.filter(endpoint=before).count()
    UserQuota.objects.create(user=owner, max_instances=2)

    refused = client.post("/api/v1/endpoints/fleet/deployments", {"model": ready(owner).pk}, format="json")

    assert refused.status_code == 403
    assert "instances to 3; your quota is 2 (max_instances" in refused.json()["detail"]
    after = Endpoint.objects.get(pk=before.pk)
    assert (after.status, after.model_version_id, after.current_deployment_id, after.options) == (
        before.status,
        before.model_version_id,
        before.current_deployment_id,
        before.options,
    )
    assert Deployment.objects.filter(endpoint=before).count() == deployments


def test_an_update_of_an_instance_type_no_longer_allowed_is_400(owner: User, api_client_for: ClientFor) -> None:
    client = api_client_for(owner)
    assert create(client, owner, "old", "sagemaker", instance_type="ml.c5.xlarge").status_code == 202
    settle("old")

    with override_settings(ALLOWED_INSTANCE_TYPES=frozenset({"ml.m5.large"})):
        refused = client.post("/api/v1/endpoints/old/deployments", {"model": ready(owner).pk}, format="json")

    assert refused.status_code == 400
    assert "'ml.c5.xlarge' is not allowed" in refused.json()["options"][0]
    assert Deployment.objects.filter(endpoint__name="old").count() == 1


@override_settings(QUOTA_MAX_LOCAL_MEMORY_MB=1024)
def test_the_dashboard_shows_the_quota_on_the_deploy_form(owner: User) -> None:
    client = Client()
    client.force_login(owner)
    version = ready(owner)

    response = client.post(
        f"/models/{version.pk}/deploy/", {"name": "roomy", "target": "local", "options": '{"memory_mb": 2048}'}
    )

    assert response.status_code == 400
    assert "your quota is 1024 MiB (max_local_memory_mb)" in response.content.decode()
    assert not Endpoint.objects.exists()


def test_the_dashboard_says_why_an_update_over_the_quota_is_refused(owner: User, api_client_for: ClientFor) -> None:
    assert create(api_client_for(owner), owner, "roomy", memory_mb=2048).status_code == 202
    settle("roomy")
    UserQuota.objects.create(user=owner, max_local_memory_mb=1024)
    client = Client()
    client.force_login(owner)

    response = client.post("/endpoints/roomy/update/", {"model_version": ready(owner).pk}, follow=True)

    assert "your quota is 1024 MiB (max_local_memory_mb)" in response.content.decode()
    assert Deployment.objects.filter(endpoint__name="roomy").count() == 1
