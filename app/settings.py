"""Settings of the API process (environment variables prefixed EXEMPLAR_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exemplar.options import ExplainConfig
from worker.keys import DEFAULT_QUEUE


class ApiSettings(BaseSettings):
    """Where the index is and the limits the service enforces."""

    # an empty variable counts as unset (docker-compose.yml passes ${EXEMPLAR_API_KEYS:-})
    model_config = SettingsConfigDict(env_prefix="EXEMPLAR_", frozen=True, env_ignore_empty=True)

    index_dir: Path = Field(
        Path(".cache/demos/tweets/index"),
        description="index directory to serve, or a versioned root (index-builder build --version): its CURRENT version",
    )
    model_dir: Path | None = Field(
        None,
        description="where the index's model is, when not where its manifest says (built on another host, in a "
        "container); its checksum must match the one the index was built from",
    )
    adapter_dir: Path | None = Field(None, description="where the index's LoRA adapter is (as model_dir)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N: where the model runs (auto: a GPU if any)")
    dtype: str | None = Field(
        None, description="the weights' precision; default: the index's (another one would change the vectors: refused)"
    )
    watch_interval_s: float = Field(
        5.0,
        ge=0.0,
        description="seconds between checks of the index directory for a new version (CURRENT switched, index "
        "rebuilt or appended); a new one is swapped in without a failed request (0: only POST /v1/admin/reload)",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="larger request bodies get 413")
    request_timeout_s: float = Field(
        300.0,
        ge=0,
        description="a heavy request still running after this many seconds is stopped at its next step and "
        "answered 503 with Retry-After (0: no deadline)",
    )
    max_request_cost_s: float | None = Field(
        None,
        ge=0,
        description="refuse up front (413 cost_limit) a request whose estimated cost (exemplar.cost) is above this "
        "many seconds; default: the request deadline (request_timeout_s), which would most likely stop it; 0: no limit",
    )
    heavy_lane: bool = Field(
        True, description="run heavy requests (compare, large pools, re-ranking) on their own thread (issue 24)"
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="larger request headers (all together) get 431")
    max_text_chars: int = Field(20_000, ge=1, description="longest text/prompt/response accepted")
    max_new_tokens: int = Field(
        128,
        ge=1,
        le=512,
        description="causal LM: the most tokens a request may ask the model to generate (POST /v1/explain with a "
        "prompt and no response)",
    )
    max_k: int = Field(50, ge=1)
    truncate_queries: bool = Field(
        False,
        description="cut queries longer than the index's max_length tokens (and say so) instead of refusing them "
        "with 422",
    )
    pool_size: int = Field(100, ge=1, description="candidate pool m of the selection strategies")
    score_space: Literal["full", "projected"] = Field(
        "full",
        description="where requests that do not say are scored: full = the exact gradients of the model's tracked "
        "weights (one forward/backward of the selected examples per request); projected = the index's vectors",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    blas_threads: int = Field(
        1, ge=1, description="numpy BLAS (OpenBLAS) threads; more only slows the selection when cores are shared"
    )
    batch_size: int = Field(16, ge=1, description="examples per forward/backward")
    batch_max: int = Field(
        8, ge=1, le=64, description="micro-batching: at most this many concurrent queries per forward/backward (1: off)"
    )
    batch_wait_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="micro-batching: how long a query waits for others to join its batch"
    )
    redis_url: str | None = Field(
        None, description="Redis for the explanation cache (unset: no cache; the service never needs it)"
    )
    cache_ttl_s: int = Field(3600, ge=1, description="seconds a cached explanation is kept")
    queue: str = Field(DEFAULT_QUEUE, description="RQ queue of batch jobs (exemplar-worker --queue)")
    job_result_ttl_s: int = Field(86_400, ge=60, description="seconds a batch job's results are kept")
    job_retries: int = Field(2, ge=0, description="re-runs of a batch job that failed or lost its worker")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key name -> sha256 hex of the key, as JSON (empty: no key needed). "
        "Clients send 'Authorization: Bearer <key>' or 'X-API-Key'",
    )
    rate_limit_per_minute: int = Field(600, ge=0, description="requests per key per minute (Redis; 0: no limit)")
    max_jobs_per_key: int = Field(4, ge=1, description="queued + running batch jobs one key may have")
    require_keys: bool = Field(
        False,
        description="refuse to start without api_keys and admin_key_sha256 (docker-compose.yml sets it: the "
        "published port must not serve an open API by accident)",
    )
    admin_key_sha256: str | None = Field(
        None,
        description="sha256 hex of the admin key that POST /v1/admin/reload requires in X-Admin-Key "
        "(unset: reload is open, as for the other routes of the embedded default)",
    )


def missing_keys(settings: ApiSettings) -> str | None:
    """What is missing for `require_keys`, as a message that says how to set it; None when nothing is."""
    if not settings.require_keys:
        return None
    missing = [
        name
        for name, value in (
            ("EXEMPLAR_API_KEYS", settings.api_keys),
            ("EXEMPLAR_ADMIN_KEY_SHA256", settings.admin_key_sha256),
        )
        if not value
    ]
    if not missing:
        return None
    return (
        f"EXEMPLAR_REQUIRE_KEYS is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
        """set EXEMPLAR_API_KEYS='{"name": "<sha256 hex of the key>"}' and EXEMPLAR_ADMIN_KEY_SHA256=<sha256 hex """
        "of the admin key> (README: Deploy with docker compose)"
    )


def explain_config(settings: ApiSettings) -> ExplainConfig:
    """The explainer limits these settings ask for."""
    return ExplainConfig(
        pool_size=settings.pool_size,
        max_k=settings.max_k,
        truncate_queries=settings.truncate_queries,
        score_space=settings.score_space,
    )
