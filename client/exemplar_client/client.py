"""`Client` (sync) and `AsyncClient`: the Exemplar API over HTTP, with the API key, retries that
honour `Retry-After`, and batch jobs (submit, wait with a progress line, results, cancel).

    from exemplar_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as exemplar:
        explanation = exemplar.explain(text="the flight was delayed again", k=5)
        for example in explanation.examples:
            print(f"{example.weight:.2f}  {example.text}")
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from exemplar_client.models import (
    CompareRequest,
    Comparison,
    Example,
    ExplainRequest,
    Explanation,
    IndexInfo,
    Job,
    JobError,
    JobRequest,
    Options,
    Query,
)

RETRY_STATUSES = frozenset({429, 503})
"""Answers that mean "not now": rate limited, or the service is busy, loading or past a deadline."""
M = TypeVar("M", bound=BaseModel)


class ExemplarError(Exception):
    """An error answer of the service (after retries): its status, message, type and request id."""

    def __init__(self, status: int, error: str, error_type: str = "", request_id: str = "") -> None:
        super().__init__(
            f"{status} {error_type or 'error'}: {error}" + (f" (request {request_id})" if request_id else "")
        )
        self.status, self.error, self.error_type, self.request_id = status, error, error_type, request_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> ExemplarError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # not this service's error body (a proxy's page, say)
            body = {"error": response.text[:500]}
        detail = body.get("error") or body.get("detail") or response.reason_phrase
        return cls(response.status_code, str(detail), body.get("error_type", ""), body.get("request_id", ""))


def retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float, max_delay_s: float) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's `Retry-After` when it sends one,
    else exponential backoff (`backoff_s * 2**attempt`), both capped at `max_delay_s`."""
    if response is not None:
        retry_after = response.headers.get("Retry-After", "")
        if retry_after.strip().isdigit():
            return min(float(retry_after), max_delay_s)
    return min(backoff_s * 2**attempt, max_delay_s)


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again, and after how long; `Client` and `AsyncClient` share it."""

    retries: int = 4
    backoff_s: float = 0.5
    max_delay_s: float = 30.0

    def after_error(self, attempt: int, error: httpx.TransportError, once: bool) -> float | None:
        """Seconds to wait before another try after a broken connection; None: raise it. A `once`
        call is retried only if it never reached the server (it may have been carried out)."""
        if attempt == self.retries or (once and not isinstance(error, httpx.ConnectError)):
            return None
        return retry_delay(None, attempt, self.backoff_s, self.max_delay_s)

    def after_answer(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before another try after a 429/503 answer; None: this answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt == self.retries:
            return None
        return retry_delay(response, attempt, self.backoff_s, self.max_delay_s)


def _final(response: httpx.Response) -> Any:
    """The parsed JSON body of a final answer, or its `ExemplarError`."""
    if response.is_error:
        raise ExemplarError.from_response(response)
    return response.json()


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _body(model: type[M], request: M | None, fields: dict[str, Any]) -> dict[str, Any]:
    if request is not None and fields:
        raise TypeError("pass a request object or keyword fields, not both")
    payload = request if request is not None else model(**fields)
    return payload.model_dump(exclude_none=True)


def _job_body(
    queries: Sequence[Query | dict[str, Any] | str], options: Options | dict[str, Any] | None
) -> dict[str, Any]:
    """A job request; a bare string is a classification query's text."""
    parsed = [Query(text=q) if isinstance(q, str) else q if isinstance(q, Query) else Query(**q) for q in queries]
    opts = options if isinstance(options, Options) else Options(**(options or {}))
    return JobRequest(queries=parsed, options=opts).model_dump(exclude_none=True)


def results_of(job: Job) -> Iterator[Explanation | JobError]:
    """A finished job's results, one per query in order: an `Explanation`, or a `JobError` for a bad query."""
    for entry in job.results or []:
        yield JobError(**entry) if "error" in entry else Explanation(**entry)


class _Poll:
    """What `wait` does with each status it fetched: one line on `out` that it rewrites
    (`job <id>: 12/50 started`), and TimeoutError once `timeout_s` has passed."""

    def __init__(self, timeout_s: float | None, out: TextIO | None) -> None:
        self.timeout_s, self.out = timeout_s, out
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def finished(self, job: Job) -> bool:
        if self.out is not None:
            self.out.write(f"\rjob {job.id[:8]}: {job.done}/{job.total} {job.status}   ")
            self.out.flush()
        if job.finished:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {job.id} is still {job.status} after {self.timeout_s} s")
        return False

    def end(self) -> None:
        if self.out is not None:
            self.out.write("\n")


class Client:
    """The Exemplar API, synchronously. `retries`: how often a 429/503 answer or a connection
    error is retried (waiting `Retry-After`, else `backoff_s` doubling, at most `max_delay_s`)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_delay_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.policy = RetryPolicy(retries, backoff_s, max_delay_s)
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout_s)
        self._http.headers.update(_headers(api_key))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, json: dict[str, Any] | None = None, *, once: bool = False) -> Any:
        """One API call with retries; the parsed JSON body, or `ExemplarError`. `once`: a call that
        must not be repeated after a broken connection (it may have been carried out: a job)."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if (delay := self.policy.after_error(attempt, exc, once)) is None:
                    raise
            else:
                if (delay := self.policy.after_answer(attempt, response)) is None:
                    return _final(response)
            time.sleep(delay)
            attempt += 1

    def ready(self) -> bool:
        """Whether the service has its index loaded (`/readyz` 200)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def index(self) -> IndexInfo:
        return IndexInfo(**self.request("GET", "/v1/index"))

    def example(self, example_id: str) -> Example:
        return Example(**self.request("GET", f"/v1/examples/{quote(example_id, safe='')}"))

    def explain(self, request: ExplainRequest | None = None, **fields: Any) -> Explanation:
        """`explain(text=..., k=5)` or `explain(ExplainRequest(...))`."""
        return Explanation(**self.request("POST", "/v1/explain", _body(ExplainRequest, request, fields)))

    def compare(self, request: CompareRequest | None = None, **fields: Any) -> Comparison:
        return Comparison(**self.request("POST", "/v1/compare", _body(CompareRequest, request, fields)))

    def submit(
        self, queries: Sequence[Query | dict[str, Any] | str], options: Options | dict[str, Any] | None = None
    ) -> Job:
        """Queue a batch job (needs Redis and a worker on the server's side); returns at once."""
        return Job(**self.request("POST", "/v1/jobs", _job_body(queries, options), once=True))

    def job(self, job_id: str) -> Job:
        return Job(**self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job or stop a running one (a finished job comes back unchanged)."""
        return Job(**self.request("DELETE", f"/v1/jobs/{job_id}"))

    def wait(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None, progress: TextIO | None = sys.stderr
    ) -> Job:
        """Poll until the job is finished (or failed, canceled, stopped), showing its progress on
        `progress` (None: quiet). TimeoutError after `timeout_s`."""
        poll = _Poll(timeout_s, progress)
        try:
            while not poll.finished(job := self.job(job_id)):
                time.sleep(poll_s)
            return job
        finally:
            poll.end()

    def results(self, job_id: str, **wait: Any) -> Iterator[Explanation | JobError]:
        """Wait for the job, then its results in query order."""
        return results_of(self.wait(job_id, **wait))


class AsyncClient:
    """The Exemplar API for asyncio: the same methods as `Client`, awaited."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_delay_s: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.policy = RetryPolicy(retries, backoff_s, max_delay_s)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self._http.headers.update(_headers(api_key))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, json: dict[str, Any] | None = None, *, once: bool = False) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if (delay := self.policy.after_error(attempt, exc, once)) is None:
                    raise
            else:
                if (delay := self.policy.after_answer(attempt, response)) is None:
                    return _final(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def index(self) -> IndexInfo:
        return IndexInfo(**await self.request("GET", "/v1/index"))

    async def example(self, example_id: str) -> Example:
        return Example(**await self.request("GET", f"/v1/examples/{quote(example_id, safe='')}"))

    async def explain(self, request: ExplainRequest | None = None, **fields: Any) -> Explanation:
        return Explanation(**await self.request("POST", "/v1/explain", _body(ExplainRequest, request, fields)))

    async def compare(self, request: CompareRequest | None = None, **fields: Any) -> Comparison:
        return Comparison(**await self.request("POST", "/v1/compare", _body(CompareRequest, request, fields)))

    async def submit(
        self, queries: Sequence[Query | dict[str, Any] | str], options: Options | dict[str, Any] | None = None
    ) -> Job:
        return Job(**await self.request("POST", "/v1/jobs", _job_body(queries, options), once=True))

    async def job(self, job_id: str) -> Job:
        return Job(**await self.request("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> Job:
        return Job(**await self.request("DELETE", f"/v1/jobs/{job_id}"))

    async def wait(
        self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None, progress: TextIO | None = sys.stderr
    ) -> Job:
        poll = _Poll(timeout_s, progress)
        try:
            while not poll.finished(job := await self.job(job_id)):
                await asyncio.sleep(poll_s)
            return job
        finally:
            poll.end()

    async def results(self, job_id: str, **wait: Any) -> list[Explanation | JobError]:
        return list(results_of(await self.wait(job_id, **wait)))
