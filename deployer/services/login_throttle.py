"""Throttling of failed sign-ins: dashboard and admin passwords, REST API tokens.

Failures are counted in the Django cache (Redis, shared by every web process) in fixed
windows of ``LOGIN_FAILURE_WINDOW_SECONDS``: per username (``LOGIN_FAILURES_PER_USERNAME``)
and per client address (``LOGIN_FAILURES_PER_ADDRESS``) for passwords, per address
(``TOKEN_FAILURES_PER_ADDRESS``) for tokens. Reaching a limit locks that username or
address for ``LOGIN_LOCKOUT_SECONDS``; while locked, a password is not even checked, so
the right one is refused too.

Nothing here depends on whether a username exists: a name nobody has is counted and
locked exactly like a real one, so the answers cannot tell them apart.

Only ints are stored (counters, and a lock's end as a Unix time), so any cache
serializer reads them back. Whatever else a key holds (anyone with Redis's password can
write one) is not trusted: a counter INCR cannot add to, or one below 1, starts again at
1; a lock that is not a deadline within one lockout is ignored. A counter planted without
expiry only makes its subject stricter (failures add up across windows) until the next
lock or successful sign-in deletes it. When Redis does not answer, `ThrottleUnavailable`
is raised and the doors refuse the attempt (fail closed): a throttle that cannot count
would let a guesser run unlimited.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Mapping
from typing import ClassVar

import redis
from django.conf import settings
from django.core.cache import cache

KEY_PREFIX = "rdeploy:signin"


LOCKED_MESSAGE = (
    "Too many failed sign-in attempts for this account or from this address. "
    "Sign-in is paused; try again in {minutes} minute(s)."
)
UNAVAILABLE_MESSAGE = "Sign-in is unavailable for a moment (its failure counter does not answer); try again shortly."
# What a refused caller is told to wait while Redis does not answer (a restart takes seconds).
UNAVAILABLE_RETRY_AFTER = 5


class SignInRefused(Exception):
    """The throttle refuses the attempt before its password or token is checked. Both doors
    answer it alike: ``status`` with Retry-After ``retry_after`` and ``message``."""

    status: ClassVar[int]
    code: ClassVar[str]

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class SignInLocked(SignInRefused):
    """Too many failures for this username or from this address; ``retry_after`` seconds left."""

    status = 429
    code = "locked"

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        super().__init__(LOCKED_MESSAGE.format(minutes=minutes), retry_after=retry_after)


class ThrottleUnavailable(SignInRefused):
    """The failure counters cannot be read or written (Redis does not answer): fail closed."""

    status = 503
    code = "unavailable"

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE_MESSAGE, retry_after=UNAVAILABLE_RETRY_AFTER)


def client_address(meta: Mapping[str, str]) -> str:
    """The caller's address; an IPv6 caller counts as its /64 (one host usually has all of it).

    Behind a reverse proxy (``RDEPLOY_TRUST_X_FORWARDED_FOR``) the proxy's own entry, the
    last in X-Forwarded-For, is used: entries before it are whatever the client sent.
    """
    address = meta.get("REMOTE_ADDR", "")
    if settings.TRUST_X_FORWARDED_FOR and (forwarded := meta.get("HTTP_X_FORWARDED_FOR", "")):
        address = forwarded.rsplit(",", 1)[-1].strip()
    parsed = _ip_address(address)
    if parsed is None:
        return address[:64] or "unknown"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        # An IPv4 client of a dual-stack listener: its /64 would be every IPv4 client's.
        return str(parsed.ipv4_mapped)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _ip_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, also when a proxy wrote it with a port ("1.2.3.4:5678", "[2001:db8::1]:443"):
    otherwise each source port of one client would be counted on its own."""
    for candidate in (address, address.rsplit(":", 1)[0].removeprefix("[").removesuffix("]")):
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


def _subject(kind: str, value: str) -> str:
    # Hashed: a username may be any text, and the cache key must stay short and plain.
    return f"{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _username_subject(username: str) -> str:
    return _subject("user", username.strip().lower())


def _check(subjects: list[str]) -> None:
    now = time.time()
    try:
        locks = cache.get_many([f"{KEY_PREFIX}:lock:{subject}" for subject in subjects])
    except redis.RedisError as exc:
        raise ThrottleUnavailable from exc
    # A lock's value says until when (Redis also expires its key then). Only a deadline
    # within one lockout from now counts: anything else in a lock's key is not one this
    # module wrote (a value read as a miss, a planted string, a deadline in the past or far
    # ahead, a key without expiry) and must neither fail the sign-in nor lock it for good.
    deadlines = [
        value
        for value in locks.values()
        if type(value) is int and now < value <= now + settings.LOGIN_LOCKOUT_SECONDS + 1
    ]
    if deadlines:
        raise SignInLocked(min(settings.LOGIN_LOCKOUT_SECONDS, max(1, math.ceil(max(deadlines) - now))))


def _count(subject: str, limit: int) -> None:
    """One more failure for ``subject``; its lock starts when the count reaches ``limit``."""
    counter = f"{KEY_PREFIX}:failures:{subject}"
    window, lockout = settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.LOGIN_LOCKOUT_SECONDS
    try:
        cache.add(counter, 0, timeout=window)
        try:
            failures = cache.incr(counter)
        # ValueError: the window ended between add and incr. ResponseError: the key holds
        # what INCR cannot add to (a string, a list, 2**63-1), which answered 503 for ever.
        except (ValueError, redis.ResponseError):
            failures = 0
        if failures < 1:
            # This failure opens a count; a negative planted one would have bought a
            # guesser a billion tries.
            cache.set(counter, 1, timeout=window)
            failures = 1
        if failures >= limit:
            cache.set(f"{KEY_PREFIX}:lock:{subject}", math.ceil(time.time() + lockout), timeout=lockout)
            # After the lock, a fresh count: the limit again, not one more try.
            cache.delete(counter)
    except redis.RedisError as exc:
        raise ThrottleUnavailable from exc


def login_throttle_check(*, username: str, address: str) -> None:
    """Before a password is checked: raise `SignInLocked` if the username or address is locked."""
    _check([_username_subject(username), _subject("login-address", address)])


def login_failure_record(*, username: str, address: str) -> None:
    """A wrong password (or an unknown or inactive username: counted the same)."""
    _count(_username_subject(username), settings.LOGIN_FAILURES_PER_USERNAME)
    _count(_subject("login-address", address), settings.LOGIN_FAILURES_PER_ADDRESS)


def login_success_record(*, username: str) -> None:
    """The account's failures are forgiven; the address's are not (one known password must
    not buy a guesser a fresh allowance for every other account)."""
    try:
        cache.delete(f"{KEY_PREFIX}:failures:{_username_subject(username)}")
    except redis.RedisError as exc:
        raise ThrottleUnavailable from exc


def token_failure_record(*, address: str) -> None:
    """A REST token that matched no active token. Raise `SignInLocked` if the address is
    locked (this failure is then not counted: the lock does not grow while it holds).

    A valid token is never refused, and never costs a look-up here: tokens are 256 random
    bits, so the throttle is against scanning and database load, not against guessing,
    and the prediction path stays free of a Redis round trip.
    """
    subject = _subject("token-address", address)
    _check([subject])
    _count(subject, settings.TOKEN_FAILURES_PER_ADDRESS)
