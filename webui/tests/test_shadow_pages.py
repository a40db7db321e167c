"""The endpoint page's shadow panel (issue 16) through Django's test client: the start form,
the comparison while a shadow runs, polling that stops once it is over, Promote and Stop."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from deployer.models import Deployment, Endpoint, ModelVersion, Shadow, ShadowPair
from testsupport.factories import make_model_version, make_shadow
from webui.tests.test_actions import live_endpoint, ready_version
from webui.tests.test_pages import HTMX, logged_in

pytestmark = pytest.mark.django_db

FRAGMENT = "/endpoints/iris/?fragment=shadow"


def store(shadow: Shadow, *pairs: dict[str, Any]) -> None:
    defaults = {"live_status": 200, "shadow_status": 200}
    ShadowPair.objects.bulk_create(ShadowPair(shadow=shadow, **(defaults | fields)) for fields in pairs)


def panel(html: str) -> str:
    return html[html.index('<section id="shadow"') : html.index("</section>", html.index('<section id="shadow"'))]


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_start_form_offers_the_owners_other_ready_versions_with_labelled_controls(
    client: Client, owner: User, colleague: User
) -> None:
    endpoint = live_endpoint(owner)
    v2 = ready_version(owner)
    make_model_version(owner, "draft")  # not ready
    make_model_version(colleague, "theirs", status=ModelVersion.Status.READY)

    html = panel(logged_in(client, owner).get("/endpoints/iris/").content.decode())

    for label, control in (("Shadow version", "shadow-version"), ("Sample percent", "shadow-percent")):
        assert f'<label for="{control}">{label}</label>' in html
    assert '<label for="shadow-duration">Duration</label>' in html
    assert re.findall(r'<option value="(\d+)">', html) == [str(v2.pk)]
    assert str(endpoint.model_version) not in html.split("<select")[1]
    assert ">Start shadow</button>" in html
    assert "hx-get" not in html.split(">")[0], "nothing to poll without a shadow"


def test_starting_through_the_form_records_the_shadow_and_its_deployment(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    v2 = ready_version(owner)

    response = logged_in(client, owner).post(
        "/endpoints/iris/shadow/", {"model_version": v2.pk, "sample_percent": 30, "duration": "90m"}, follow=True
    )

    shadow = Shadow.objects.get(endpoint=endpoint)
    assert (shadow.model_version, shadow.sample_percent, shadow.duration.total_seconds()) == (v2, 30, 5400)
    assert (shadow.status, shadow.deployment.kind) == (Shadow.Status.STARTING, Deployment.Kind.SHADOW)
    html = response.content.decode()
    assert f"Starting {v2} beside {endpoint.model_version}" in html
    assert 'hx-trigger="every 5s"' in panel(html), "the panel polls while the shadow starts"
    assert ">Start shadow</button>" not in panel(html)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sample_percent": 0, "duration": "2h"}, "Sample percent: Ensure this value is greater than or equal to 1."),
        ({"sample_percent": 10, "duration": "2 hours"}, "&#x27;duration&#x27; must be a whole number of minutes"),
    ],
)
def test_a_refused_start_says_why_and_starts_nothing(
    client: Client, owner: User, fields: dict[str, Any], message: str
) -> None:
    live_endpoint(owner)
    v2 = ready_version(owner)
    response = logged_in(client, owner).post("/endpoints/iris/shadow/", {"model_version": v2.pk, **fields}, follow=True)
    assert message in response.content.decode()
    assert not Shadow.objects.exists()


def test_a_running_class_shadow_shows_agreement_confusion_errors_and_latency(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner), sample_percent=50, copies_sent=5, copies_dropped=1)
    store(
        shadow,
        {"live_output": ["setosa", "setosa"], "shadow_output": ["setosa", "versicolor"], "live_ms": 2, "shadow_ms": 3},
        {"live_output": ["versicolor", "virginica"], "shadow_output": ["versicolor", "virginica"], "live_ms": 4},
        {"live_output": ["setosa"], "shadow_status": 500, "shadow_error": "object 'Petal.Width' not found"},
    )

    html = panel(logged_in(client, owner).get("/endpoints/iris/").content.decode())

    words = text(html)
    assert "answers copies of 50 % of the live requests" in words
    assert "Paired requests 3 (5 copies sent, 1 dropped)" in words
    # 3 of the 4 rows agree.
    assert '<strong id="shadow-agreement">75.0 %</strong>' in html
    assert "(3 of 4 rows)" in words
    assert "Shadow errors 1 (33.3 % of the requests)" in words
    assert "object &#x27;Petal.Width&#x27; not found" in html
    # Nearest rank of live 2, 4 (the failed pair has none): p50 2, p99 4; shadow 3 alone.
    assert "live 2.0 / 4.0 ms; shadow 3.0 / 3.0 ms" in words
    rows = re.findall(r'<tr><th scope="row">(\w+)</th>(.*?)</tr>', html)
    assert [(label, re.findall(r"<td[^>]*>(\d+)</td>", cells)) for label, cells in rows] == [
        ("setosa", ["1", "1", "0"]),
        ("versicolor", ["0", "1", "0"]),
        ("virginica", ["0", "0", "1"]),
    ]
    assert html.count('class="agreed"') == 3
    assert ">Promote</button>" in html
    assert ">Stop shadow</button>" in html
    assert ">Start shadow</button>" not in html


def test_a_numeric_shadow_shows_the_differences_and_a_histogram_of_bars(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner))
    # Differences -1, 0, 0, 4: from -1 to 4 in bins of 0.5.
    store(shadow, {"live_output": [1.0, 2.0, 3.0, 10.0], "shadow_output": [0.0, 2.0, 3.0, 14.0]})

    html = panel(logged_in(client, owner).get("/endpoints/iris/").content.decode())

    words = text(html)
    assert "Mean absolute difference 1.25" in words  # (1 + 0 + 0 + 4) / 4
    assert "Max absolute difference 4" in words
    assert "shadow-agreement" not in html
    bars = re.findall(r'<span class="bin">([^<]+)</span>.*?style="width: ([\d.]+)%".*?>(\d+)</span>', html)
    assert len(bars) == 10
    assert bars[0] == ("-1 to -0.5", "50.0", "1")
    assert bars[2] == ("0 to 0.5", "100.0", "2")
    assert bars[9] == ("3.5 to 4", "50.0", "1")


def test_the_panel_polls_while_the_shadow_runs_and_answers_286_once_it_ended(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner))
    client = logged_in(client, owner)

    running = client.get(FRAGMENT, headers=HTMX)
    assert running.status_code == 200
    assert 'hx-trigger="every 5s"' in running.content.decode()

    Shadow.objects.filter(pk=shadow.pk).update(status=Shadow.Status.ENDED, outcome="Stopped by its owner.")
    ended = client.get(FRAGMENT, headers=HTMX)
    assert ended.status_code == 286
    html = ended.content.decode()
    assert "hx-trigger" not in html
    assert "Stopped by its owner." in html
    assert ">Start shadow</button>" in html, "another one can start"


@pytest.mark.parametrize(
    ("action", "kind", "status"),
    [("promote", Deployment.Kind.PROMOTE, Shadow.Status.PROMOTING), ("stop", Deployment.Kind.END_SHADOW, "ending")],
)
def test_promote_and_stop_buttons_start_their_deployment(
    client: Client, owner: User, action: str, kind: str, status: str
) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner))

    response = logged_in(client, owner).post(f"/endpoints/iris/shadow/{action}/")

    assert response.status_code == 302
    shadow.refresh_from_db()
    assert shadow.status == status
    endpoint.refresh_from_db()
    assert endpoint.current_deployment is not None
    assert (endpoint.current_deployment.kind, endpoint.current_deployment.model_version) == (kind, shadow.model_version)


def test_promote_without_a_running_shadow_says_so(client: Client, owner: User) -> None:
    live_endpoint(owner)
    response = logged_in(client, owner).post("/endpoints/iris/shadow/promote/", follow=True)
    assert "Endpoint iris has no shadow." in response.content.decode()


def test_another_user_gets_404_for_the_panel_and_its_forms(client: Client, owner: User, colleague: User) -> None:
    endpoint = live_endpoint(owner)
    shadow = make_shadow(endpoint, ready_version(owner))
    theirs = ready_version(colleague)
    client = logged_in(client, colleague)
    assert client.get(FRAGMENT, headers=HTMX).status_code == 404
    form = {"model_version": theirs.pk, "sample_percent": 10, "duration": "1h"}
    assert client.post("/endpoints/iris/shadow/", form).status_code == 404
    for action in ("promote", "stop"):
        assert client.post(f"/endpoints/iris/shadow/{action}/").status_code == 404
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.RUNNING
    assert Endpoint.objects.get(pk=endpoint.pk).current_deployment == endpoint.current_deployment


def test_update_roll_back_and_stop_wait_while_a_shadow_runs(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner, previous_model_version=ready_version(owner))
    client = logged_in(client, owner)

    def disabled(html: str) -> list[str]:
        actions = html[html.index('<section id="actions"') :]
        return re.findall(r"<button type=\"submit\"[^>]* disabled[^>]*>([^<]+)</button>", actions)

    assert disabled(client.get("/endpoints/iris/").content.decode()) == []
    make_shadow(endpoint, ready_version(owner))
    html = client.get("/endpoints/iris/").content.decode()
    assert disabled(html) == ["Update model", "Roll back", "Stop"]
    assert "a shadow runs: promote it or stop it first" in html
