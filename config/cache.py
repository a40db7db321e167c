"""JSON, not pickle, for Django's Redis cache.

Django's RedisCache pickles values by default, and unpickling runs code: anyone who can
write to Redis (its password is in every service's environment) would run code in the web
process and the workers. Everything rdeploy caches is JSON (strings, numbers, lists and
dicts with string keys); a value that is not, planted or left by an older version, reads
as a miss and is logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


class JSONSerializer:
    """The serializer interface of django.core.cache.backends.redis (`dumps`, `loads`)."""

    def dumps(self, obj: Any) -> bytes | int:
        # Integers stay plain, as Django's own serializer keeps them, so incr() and decr()
        # work on them in Redis.
        if type(obj) is int:
            return obj
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            pass
        try:
            return json.loads(data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            logger.warning("a cache value is not JSON (%d bytes); read as a miss", len(data))
            return None
