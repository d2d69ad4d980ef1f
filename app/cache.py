"""Optional Redis cache of explanations: the service answers the same whether Redis is there or not.

Keys are ``exemplar:explain:<index version>:<sha256 of the normalised request>`` (`worker.keys`): the index
version hashes the manifest's model and dataset checksums, projection, creation time and code
version, so a new index version (rebuild, append + reload) never serves an old entry. The
normalised request is the validated body with every default filled in (so ``{"text": "a"}``
and ``{"text": "a", "k": 5}`` share an entry), serialised with sorted keys.

Redis errors never fail a request: the cache marks itself down, answers "miss", and tries
Redis again after ``retry_after`` seconds, so it recovers by itself when Redis returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any

from exemplar.store import Manifest
from worker.keys import explanation_key

log = logging.getLogger("exemplar.api.cache")


def index_version(manifest: Manifest) -> str:
    """A short hash that changes whenever the served index does."""
    parts = [
        manifest.model_checksum,
        manifest.dataset_checksum,
        manifest.params,
        manifest.proj_dim,
        manifest.seed,
        manifest.created_at,
        manifest.code_version,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def request_key(version: str, request: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return explanation_key(version, digest)


class ExplanationCache:
    """get/set of JSON bodies in Redis; state ``off`` (no URL), ``ok`` or ``down: <reason>``."""

    def __init__(self, redis_url: str | None, ttl_s: int, retry_after: float = 5.0, timeout_s: float = 0.5) -> None:
        self.ttl_s = ttl_s
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._down_until = 0.0
        self.state = "off"
        self._redis: Any = None
        if redis_url:
            from redis import Redis

            self._redis = Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            self.state = "unknown"

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def _call(self, op: str, *args: Any) -> Any:
        """Run a Redis command; None (and the cache marked down) on any Redis error."""
        from redis.exceptions import RedisError

        if self._redis is None or time.monotonic() < self._down_until:
            return None
        try:
            result = getattr(self._redis, op)(*args)
        except RedisError as exc:
            with self._lock:
                if not self.state.startswith("down"):
                    log.warning("redis cache unavailable, serving without it: %s", exc)
                self.state = f"down: {type(exc).__name__}"
                self._down_until = time.monotonic() + self.retry_after
            return None
        with self._lock:
            if self.state != "ok":
                log.info("redis cache available")
            self.state = "ok"
        return result

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._call("get", key)
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._call("set", key, json.dumps(value), self.ttl_s)

    def check(self) -> str:
        """Ping Redis now (readiness probes), whatever the back-off; returns the state."""
        if self._redis is not None:
            self._down_until = 0.0
            self._call("ping")
        return self.state
