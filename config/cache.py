"""Signed JSON, not pickle, for Django's Redis cache.

Django's RedisCache pickles values by default, and unpickling runs code: anyone who can
write to Redis (its password is in every service's environment) would run code in the web
process and the workers. Everything rdeploy caches is JSON (strings, numbers, lists and
dicts with string keys), and every value but a plain integer is stored signed with the
installation's secret key (``django.core.signing``, salted for the cache): a value Redis
holds that rdeploy did not write, planted or left by an older version, reads as a miss and
is logged. So a cached value may be trusted as rdeploy's own (the dashboard's chart HTML
is rendered from the cache).

Integers stay plain, as Django's own serializer keeps them, so ``incr``/``decr`` work in
Redis: they are counters and lock deadlines, which readers take as numbers only. A
signature does not name its key: a signed value copied to another key reads there (every
such value is one rdeploy wrote for some key; readers check the type they expect).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core import signing

logger = logging.getLogger(__name__)

SALT = "rdeploy.cache"


class JSONSerializer:
    """The serializer interface of django.core.cache.backends.redis (`dumps`, `loads`)."""

    def dumps(self, obj: Any) -> bytes | int:
        if type(obj) is int:
            return obj
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        return signing.Signer(salt=SALT).sign(text).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            pass
        try:
            return json.loads(signing.Signer(salt=SALT).unsign(data.decode()))
        except signing.BadSignature:
            logger.warning("a cache value is not signed by this installation (%d bytes); read as a miss", len(data))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            logger.warning("a cache value is not JSON (%d bytes); read as a miss", len(data))
        return None
