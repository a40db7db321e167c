"""Failed sign-ins are throttled per username and per address, on the session's real Redis.

The dashboard's login, the admin's, REST tokens and the token invocation route; a
username nobody has is answered exactly like a real one; Redis down refuses (fail closed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, override_settings
from rest_framework.test import APIClient

from deployer.services.login_throttle import KEY_PREFIX, _username_subject
from deployer.services.tokens import api_token_create

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
GENERIC = "Please enter a correct username and password"
LOCKED = "Too many failed sign-in attempts for this account or from this address"


@pytest.fixture(autouse=True)
def no_failures_counted() -> Iterator[None]:
    """Each test starts and leaves the session's Redis with no failure counted or lock held."""

    def forget() -> None:
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(f"*{KEY_PREFIX}:*"):
            client.delete(key)

    forget()
    yield
    forget()


def sign_in(username: str, password: str, address: str = "10.0.0.1") -> Any:
    return Client(REMOTE_ADDR=address).post(LOGIN, {"username": username, "password": password})


def refusal(response: Any) -> str:
    """The form's error, as shown on the page."""
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', response.content.decode(), re.S)
    assert match, response.content.decode()[:2000]
    return match[1]


def signed_in(response: Any) -> bool:
    return response.status_code == 302 and "_auth_user_id" in response.wsgi_request.session


@override_settings(LOGIN_FAILURES_PER_USERNAME=3, LOGIN_FAILURES_PER_ADDRESS=100)
def test_after_too_many_wrong_passwords_the_right_one_is_refused_with_the_generic_lock_message(owner: User) -> None:
    for _ in range(3):
        wrong = sign_in("owner", "not-the-password")
        assert wrong.status_code == 200
        assert GENERIC in refusal(wrong)

    right = sign_in("owner", "owner-password-123", address="10.0.0.2")

    assert right.status_code == 429
    assert LOCKED in refusal(right)
    assert 1 <= int(right["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert not signed_in(right)


@override_settings(LOGIN_FAILURES_PER_USERNAME=3, LOGIN_FAILURES_PER_ADDRESS=100)
def test_a_username_nobody_has_is_answered_exactly_like_a_real_one(owner: User) -> None:
    # The Retry-After values may differ by the second each lock began.
    def answers(username: str, address: str) -> list[tuple[int, str, bool]]:
        return [
            (response.status_code, refusal(response), response.has_header("Retry-After"))
            for response in (sign_in(username, "not-the-password", address) for _ in range(5))
        ]

    assert answers("owner", "10.0.0.3") == answers("nobody-by-this-name", "10.0.0.4")


@override_settings(LOGIN_FAILURES_PER_USERNAME=100, LOGIN_FAILURES_PER_ADDRESS=4)
def test_the_address_limit_locks_every_username_from_that_address(owner: User, colleague: User) -> None:
    for username in ("owner", "admin", "root", "someone"):
        assert sign_in(username, "guess", address="10.0.0.5").status_code == 200

    from_there = sign_in("colleague", "colleague-password-123", address="10.0.0.5")
    assert from_there.status_code == 429
    assert LOCKED in refusal(from_there)
    assert signed_in(sign_in("colleague", "colleague-password-123", address="10.0.0.6"))


@override_settings(LOGIN_FAILURES_PER_USERNAME=2, LOGIN_FAILURES_PER_ADDRESS=100)
def test_the_admin_login_is_throttled_too(staff: User) -> None:
    client = Client(REMOTE_ADDR="10.0.0.7")
    for _ in range(2):
        client.post("/admin/login/", {"username": "staff", "password": "wrong"})

    response = client.post("/admin/login/", {"username": "staff", "password": "staff-password-123"})

    assert LOCKED in response.content.decode()
    assert "_auth_user_id" not in client.session


@override_settings(LOGIN_FAILURES_PER_USERNAME=2, LOGIN_FAILURE_WINDOW_SECONDS=1, LOGIN_LOCKOUT_SECONDS=1)
def test_failures_are_forgotten_after_the_window_and_a_lock_ends(owner: User) -> None:
    sign_in("owner", "wrong")
    time.sleep(1.2)  # past the 1 s window: that failure is forgotten
    sign_in("owner", "wrong")
    assert signed_in(sign_in("owner", "owner-password-123"))

    sign_in("owner", "wrong")
    sign_in("owner", "wrong")
    assert sign_in("owner", "owner-password-123").status_code == 429
    time.sleep(1.2)  # past the 1 s lock
    assert signed_in(sign_in("owner", "owner-password-123"))


@override_settings(LOGIN_FAILURES_PER_USERNAME=3, LOGIN_FAILURES_PER_ADDRESS=100)
def test_a_successful_sign_in_forgives_the_accounts_failures(owner: User) -> None:
    sign_in("owner", "wrong")
    sign_in("owner", "wrong")
    assert signed_in(sign_in("owner", "owner-password-123"))
    sign_in("owner", "wrong")
    sign_in("owner", "wrong")

    assert signed_in(sign_in("owner", "owner-password-123"))


def test_sign_in_is_refused_while_redis_does_not_answer(owner: User) -> None:
    nowhere = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    with override_settings(CACHES=nowhere):
        right = sign_in("owner", "owner-password-123")
        wrong = sign_in("owner", "a-guess")

    for response in (right, wrong):
        assert response.status_code == 503
        assert "Sign-in is unavailable for a moment" in refusal(response)
        assert response["Retry-After"]
        assert not signed_in(response)


def token_client(secret: str, address: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


@override_settings(TOKEN_FAILURES_PER_ADDRESS=3)
def test_wrong_tokens_from_one_address_are_answered_429_with_retry_after(owner: User) -> None:
    for attempt in range(3):
        assert token_client(f"rdp_wrong{attempt}", "10.0.1.1").get("/api/v1/tokens/").status_code == 401

    locked = token_client("rdp_wrong-again", "10.0.1.1").get("/api/v1/tokens/")
    invocation = token_client("rdp_wrong-again", "10.0.1.1").post(
        "/api/v1/endpoints/anything/invocations", b"x", content_type="text/csv"
    )

    assert locked.status_code == 429
    assert 1 <= int(locked["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert LOCKED in locked.json()["detail"]
    assert invocation.status_code == 429
    assert invocation["Retry-After"]
    # Elsewhere a wrong token is still just wrong, and a valid token is never refused.
    assert token_client("rdp_wrong", "10.0.1.2").get("/api/v1/tokens/").status_code == 401
    secret = api_token_create(user=owner).secret
    assert token_client(secret, "10.0.1.1").get("/api/v1/tokens/").status_code == 200


@override_settings(TOKEN_FAILURES_PER_ADDRESS=2)
def test_wrong_tokens_on_the_invocation_route_count_toward_the_lock(owner: User) -> None:
    client = token_client("rdp_wrong", "10.0.1.3")
    answers = [client.post("/api/v1/endpoints/x/invocations", b"x", content_type="text/csv") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [401, 401, 429]
    assert client.get("/api/v1/tokens/").status_code == 429


@override_settings(TOKEN_FAILURES_PER_ADDRESS=1, LOGIN_FAILURE_WINDOW_SECONDS=1, LOGIN_LOCKOUT_SECONDS=1)
def test_a_token_lock_ends_after_its_time(owner: User) -> None:
    client = token_client("rdp_wrong", "10.0.1.4")
    assert client.get("/api/v1/tokens/").status_code == 401
    assert client.get("/api/v1/tokens/").status_code == 429
    time.sleep(1.2)  # past the 1 s lock
    assert client.get("/api/v1/tokens/").status_code == 401


@pytest.mark.parametrize(
    "planted",
    [
        pytest.param(b"not signed by this installation", id="unsigned-bytes"),
        pytest.param("a signed string", id="signed-string"),
        pytest.param(lambda: int(time.time()) + 10**6, id="deadline-far-ahead"),
        pytest.param(lambda: int(time.time()) - 60, id="deadline-past-without-expiry"),
    ],
)
def test_a_lock_key_holding_what_the_throttle_never_writes_neither_fails_nor_locks_the_sign_in(
    owner: User, planted: Any
) -> None:
    """Anyone with Redis's password can write a lock's key: such a value is ignored (it
    answered 500, or locked the account for as long as the key lived, without expiry)."""
    key = f"{KEY_PREFIX}:lock:{_username_subject('owner')}"
    value = planted() if callable(planted) else planted
    if isinstance(value, bytes):
        redis.Redis.from_url(settings.REDIS_URL).set(cache.make_and_validate_key(key), value)
    else:
        cache.set(key, value, timeout=None)
    assert key in cache.get_many([key]), "the planted value must be there for the sign-in to read"

    assert signed_in(sign_in("owner", "owner-password-123"))


@override_settings(LOGIN_LOCKOUT_SECONDS=60)
def test_a_lock_the_throttle_wrote_still_locks_with_its_time_left(owner: User) -> None:
    key = f"{KEY_PREFIX}:lock:{_username_subject('owner')}"
    cache.set(key, int(time.time()) + 30, timeout=60)

    refused = sign_in("owner", "owner-password-123")

    assert refused.status_code == 429
    assert 29 <= int(refused["Retry-After"]) <= 31


@pytest.mark.parametrize(
    "planted",
    [
        pytest.param("a signed string", id="signed-string"),
        pytest.param(["a", "redis", "list"], id="redis-list"),
        pytest.param(2**63 - 1, id="incr-would-overflow"),
        pytest.param(-(10**9), id="a-billion-tries-bought"),
    ],
)
@override_settings(LOGIN_FAILURES_PER_USERNAME=3, LOGIN_FAILURES_PER_ADDRESS=100)
def test_a_failure_counter_holding_what_the_throttle_never_writes_still_counts_to_a_lock(
    owner: User, planted: Any
) -> None:
    """Anyone with Redis's password can write a counter's key: what INCR cannot add to
    answered 503 for ever (never 429), and a negative count disabled the username's limit.
    Now such a counter starts again at 1, and the limit locks as it does from nothing."""
    key = f"{KEY_PREFIX}:failures:{_username_subject('owner')}"
    raw = redis.Redis.from_url(settings.REDIS_URL)
    if isinstance(planted, list):
        raw.rpush(cache.make_and_validate_key(key), *planted)
    else:
        cache.set(key, planted, timeout=None)
    assert raw.exists(cache.make_and_validate_key(key)), "the planted counter must be there"

    wrong = [sign_in("owner", "wrong-password").status_code for _ in range(3)]
    right = sign_in("owner", "owner-password-123")

    assert wrong == [200, 200, 200], "a wrong password is answered by the form, not 503"
    assert right.status_code == 429
    assert LOCKED in refusal(right)
    assert raw.ttl(cache.make_and_validate_key(key)) == -2, "the lock started a fresh count"
