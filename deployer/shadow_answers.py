"""What a shadow pair keeps of an answer, for both targets (the gateway's copies and
SageMaker's data capture read answers the same way).

An answer is the model's output: hostile input to the privileged process that stores and
compares it. So it is read only when it is at most ``MAX_READ_BYTES`` (parsing it holds
the web process's interpreter lock), and kept only when it is strict JSON (no NaN or
Infinity, no number a float cannot hold: PostgreSQL's jsonb refuses them, so one such
answer would lose the whole batch it was stored in), nested at most ``MAX_DEPTH`` deep,
with objects of at most ``MAX_KEYS`` keys (a probability row is one key per class), and
when what is kept of it (the ``predictions``, or the whole answer, and at most
``SHADOW_MAX_ROWS`` rows of it) is at most ``MAX_KEPT_BYTES`` as jsonb stores it (storing
and comparing thousands of pairs stays cheap). Text loses its NUL characters and lone
surrogates, which jsonb and UTF-8 refuse.

An answer that is not kept says why (``KeptAnswer.reason``), in words shown with the
comparison; one that is not JSON at all is kept as nothing, without a reason, as before
(its rows are then unmatched).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DataError, transaction

from deployer.models import ShadowPair

logger = logging.getLogger(__name__)

MAX_READ_BYTES = 1024 * 1024
MAX_KEPT_BYTES = 64 * 1024
MAX_DEPTH = 64
MAX_KEYS = 1000

TOO_LARGE = "The answer is too large to compare ({size} bytes, more than {limit})."
ROWS_TOO_LARGE = (
    "The answer is too large to compare (its first {rows} rows are more than {limit} bytes as PostgreSQL stores them)."
)
NOT_STRICT_JSON = "The answer is not comparable JSON ({problem})."


@dataclass(frozen=True)
class KeptAnswer:
    output: Any
    # Why nothing is kept of an answer that was JSON, or too large to find out; else "".
    reason: str = ""


class _Refused(ValueError):
    """The answer parses as Python's json does, but is not kept (the message says why)."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON has")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"{text[:20]} is larger than a number can be")
    return number


def text_clean(value: str) -> str:
    """``value`` as PostgreSQL's text and jsonb hold it: without NUL characters, and with
    any lone surrogate (JSON's "\\ud800" parses to one; UTF-8 cannot encode it) as "?"."""
    value = value.replace("\x00", "")
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


class _Cleaner:
    """Cleans a parsed answer while counting what PostgreSQL's jsonb will store of it, and
    stops as soon as that is more than ``MAX_KEPT_BYTES``: the walk costs no more than what
    is kept. jsonb writes numbers in full, so 1e308 takes 309 bytes there, not 5."""

    def __init__(self) -> None:
        self.size = 0

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > MAX_KEPT_BYTES:
            raise _TooLarge

    def clean(self, value: Any, depth: int = 1) -> Any:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} deep")
        if isinstance(value, str):
            value = text_clean(value)
            self._count(len(value.encode()) + 3)
            return value
        if isinstance(value, float):
            written = repr(value)
            # Written with an exponent here, in full digits there.
            self._count(len(written) + (abs(int(written.partition("e")[2])) if "e" in written else 0) + 1)
            return value
        if isinstance(value, list):
            self._count(2)
            return [self.clean(item, depth + 1) for item in value]
        if isinstance(value, dict):
            if len(value) > MAX_KEYS:
                raise _Refused(f"an object with more than {MAX_KEYS} keys")
            self._count(2)
            return {self.clean(key, depth + 1): self.clean(item, depth + 1) for key, item in value.items()}
        # Ints (at most 4300 digits: Python's parser refuses more), booleans and null.
        self._count(len(str(value)) + 1 if isinstance(value, int) else 5)
        return value


class _TooLarge(Exception):
    """What would be kept is more than MAX_KEPT_BYTES."""


def answer_kept(body: bytes | str) -> KeptAnswer:
    """What a pair keeps of one answer's body (see the module's docstring)."""
    if len(body) > MAX_READ_BYTES:
        return KeptAnswer(None, TOO_LARGE.format(size=len(body), limit=MAX_READ_BYTES))
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        if isinstance(parsed, dict) and "predictions" in parsed:
            parsed = parsed["predictions"]
        if isinstance(parsed, list):
            parsed = parsed[: settings.SHADOW_MAX_ROWS]
        return KeptAnswer(_Cleaner().clean(parsed))
    except _TooLarge:
        return KeptAnswer(None, ROWS_TOO_LARGE.format(rows=settings.SHADOW_MAX_ROWS, limit=MAX_KEPT_BYTES))
    except _Refused as refused:
        return KeptAnswer(None, NOT_STRICT_JSON.format(problem=refused))
    except RecursionError:
        return KeptAnswer(None, NOT_STRICT_JSON.format(problem=f"nested more than {MAX_DEPTH} deep"))
    except (ValueError, UnicodeDecodeError):
        return KeptAnswer(None)


def shadow_pairs_insert(pairs: list[ShadowPair]) -> int:
    """Insert the pairs; a pair the database refuses anyway (a value kept here that it
    cannot hold) is left out alone, not with its whole batch, and is logged. Returns how
    many were stored. Runs inside the caller's transaction, if any (savepoints)."""
    try:
        with transaction.atomic():
            ShadowPair.objects.bulk_create(pairs)
        return len(pairs)
    except (DataError, UnicodeEncodeError):
        stored = 0
        for pair in pairs:
            try:
                with transaction.atomic():
                    ShadowPair.objects.bulk_create([pair])
                stored += 1
            except (DataError, UnicodeEncodeError):
                logger.exception("shadow %s: the database refused a pair; it is left out", pair.shadow_id)
        return stored
