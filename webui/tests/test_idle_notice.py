"""The endpoint page's idle notices (issue 14): "stopped: idle since ..." with the Start
button after an idle stop, and the warning before it."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from deployer.models import Deployment, Endpoint, LogLine
from deployer.services.endpoints import endpoints_stop_idle
from webui.tests.test_actions import live_endpoint
from webui.tests.test_pages import logged_in


def called_at(endpoint: Endpoint, ago: timedelta) -> LogLine:
    line = LogLine.objects.create(
        endpoint=endpoint, source=LogLine.Source.RUNTIME, message="x POST /invocations 200 3 ms (queued 0 ms)"
    )
    LogLine.objects.filter(pk=line.pk).update(created_at=timezone.now() - ago)
    line.refresh_from_db()
    return line


def test_an_endpoint_stopped_for_idleness_says_since_when_and_offers_start(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner, options={"idle_stop_after": "30m"})
    Endpoint.objects.filter(pk=endpoint.pk).update(created_at=timezone.now() - timedelta(hours=3))
    last_call = called_at(endpoint, timedelta(hours=2))
    assert endpoints_stop_idle() == 1
    Deployment.objects.filter(endpoint=endpoint, kind=Deployment.Kind.STOP).update(status=Deployment.Status.SUCCEEDED)
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.STOPPED)

    page = logged_in(client, owner).get("/endpoints/iris/").content.decode()

    assert f"stopped: idle since {timezone.localtime(last_call.created_at):%Y-%m-%d %H:%M}" in page
    assert ">Start</button>" in page


def test_a_person_s_stop_is_not_called_idle(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    logged_in(client, owner).post("/endpoints/iris/stop/")
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.STOPPED)
    page = client.get("/endpoints/iris/").content.decode()
    assert ">Start</button>" in page
    assert "idle since" not in page


def test_the_page_warns_before_the_idle_stop_and_not_earlier(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner, options={"idle_stop_after": "30m"})
    Endpoint.objects.filter(pk=endpoint.pk).update(created_at=timezone.now() - timedelta(hours=3))
    line = called_at(endpoint, timedelta(minutes=5))
    client = logged_in(client, owner)
    assert 'id="idle-warning"' not in client.get("/endpoints/iris/").content.decode()

    # Half of a 30-minute period idle: the warning says when it will stop.
    LogLine.objects.filter(pk=line.pk).update(created_at=timezone.now() - timedelta(minutes=20))
    page = client.get("/endpoints/iris/").content.decode()
    assert 'id="idle-warning"' in page
    stops_at = timezone.localtime(timezone.now() - timedelta(minutes=20) + timedelta(minutes=30))
    assert f"it will be stopped at {stops_at:%Y-%m-%d %H:}" in page
