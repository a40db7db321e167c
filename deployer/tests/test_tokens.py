from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from deployer.models import ApiToken
from deployer.services.tokens import api_token_authenticate, api_token_create, api_token_revoke, hash_secret


def test_tokens_are_stored_only_as_hashes(owner: User) -> None:
    issued = api_token_create(user=owner, name="ci")

    stored = ApiToken.objects.get()
    assert issued.secret.startswith("rdp_")
    assert len(issued.secret) > 40
    assert stored.key_hash == hash_secret(issued.secret)
    assert issued.secret not in {stored.key_hash, stored.prefix, stored.name}
    assert api_token_authenticate(secret=issued.secret) == stored
    assert api_token_authenticate(secret=issued.secret + "x") is None


def test_a_revoked_token_no_longer_authenticates(owner: User) -> None:
    issued = api_token_create(user=owner)
    api_token_revoke(token=issued.token)
    api_token_revoke(token=issued.token)  # twice is harmless

    assert api_token_authenticate(secret=issued.secret) is None
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {issued.secret}")
    assert client.get("/api/v1/tokens/").status_code == 401


def test_rest_calls_authenticate_with_the_token_header(owner: User) -> None:
    issued = api_token_create(user=owner)
    client = APIClient()
    assert client.get("/api/v1/tokens/").status_code == 401

    client.credentials(HTTP_AUTHORIZATION=f"Token {issued.secret}")
    response = client.get("/api/v1/tokens/")
    assert response.status_code == 200
    assert [row["prefix"] for row in response.json()["results"]] == [issued.token.prefix]


def test_a_user_creates_and_revokes_tokens_over_the_api(owner: User, api_client_for) -> None:
    client = api_client_for(owner)
    created = client.post("/api/v1/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    assert api_token_authenticate(secret=secret) is not None

    assert client.delete(f"/api/v1/tokens/{created.json()['id']}/").status_code == 204
    assert api_token_authenticate(secret=secret) is None
    assert client.get(f"/api/v1/tokens/{created.json()['id']}/").json()["revoked_at"] is not None


def test_other_users_cannot_see_or_revoke_a_token(owner: User, colleague: User, api_client_for) -> None:
    issued = api_token_create(user=owner)
    client = api_client_for(colleague)

    assert client.get(f"/api/v1/tokens/{issued.token.pk}/").status_code == 404
    assert client.delete(f"/api/v1/tokens/{issued.token.pk}/").status_code == 404
    assert api_token_authenticate(secret=issued.secret) is not None


def test_create_api_token_command_prints_a_working_token_once(owner: User) -> None:
    out = StringIO()
    call_command("create_api_token", "owner", stdout=out)
    secret = out.getvalue().strip()
    token = api_token_authenticate(secret=secret)
    assert token is not None
    assert token.user == owner

    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_token", "nobody")
