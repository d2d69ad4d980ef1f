"""API keys (stored as sha256 hashes in settings) and per-key rate limits backed by Redis.

Keys are optional: with `EXEMPLAR_API_KEYS` empty (the embedded default) every route is open.
With keys, `/v1/*` routes need `Authorization: Bearer <key>` or `X-API-Key: <key>`; the key's
*name* (never the key) identifies the client in logs, limits and job ownership. The rate limit
is a fixed one-minute window per key name in Redis (`INCR` + `EXPIRE`); without keys, without
Redis, or while Redis is down, requests are not limited (the service keeps answering).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from exemplar.errors import AuthenticationError, RateLimitedError
from worker.keys import rate_limit_key

log = logging.getLogger("exemplar.api.security")
ANONYMOUS = "anonymous"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(headers: Any, keys: dict[str, str]) -> str:
    """The name of the key the request carries; ``anonymous`` when no keys are configured."""
    if not keys:
        return ANONYMOUS
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise AuthenticationError("this service needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    digest = key_hash(given)
    for name, expected in keys.items():
        if hmac.compare_digest(digest, expected.lower()):
            return name
    raise AuthenticationError("unknown API key")


class RateLimiter:
    """At most ``per_minute`` requests per client name per clock minute, counted in Redis."""

    def __init__(self, redis_url: str | None, per_minute: int) -> None:
        self.per_minute = per_minute
        self._redis: Any = None
        if redis_url and per_minute > 0:
            from redis import Redis

            self._redis = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def check(self, name: str) -> None:
        from redis.exceptions import RedisError

        if self._redis is None:
            return
        now = time.time()
        window = int(now // 60)
        key = rate_limit_key(name, window)
        try:
            with self._redis.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count = int(pipe.execute()[0])
        except RedisError as exc:
            log.warning("rate limit not enforced, Redis unavailable: %s", type(exc).__name__)
            return
        if count > self.per_minute:
            retry_after = max(1, int((window + 1) * 60 - now) + 1)
            raise RateLimitedError(
                f"rate limit of {self.per_minute} requests per minute exceeded for key {name!r}; "
                f"retry after {retry_after} s",
                retry_after,
            )
