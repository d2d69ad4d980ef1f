"""The service's middleware: the request id (with the request log line and metrics) and the body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.observability import REQUEST_ID, Metrics

log = logging.getLogger("exemplar.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


async def add_request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Take the caller's `X-Request-ID` (when well-formed) or make one; log and count the request; say
    what the request was estimated to cost (`X-Cost-Estimate-S`, seconds) when it was estimated."""
    given = request.headers.get("x-request-id", "")
    request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    token = REQUEST_ID.set(request.state.request_id)
    started = time.perf_counter()
    try:
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        cost = getattr(request.state, "cost", None)  # set by `app.deps.admit` on explain and compare
        if cost is not None:
            response.headers["X-Cost-Estimate-S"] = f"{cost.seconds:.3g}"
        route = getattr(request.scope.get("route"), "path", "unmatched")
        seconds = time.perf_counter() - started
        metrics: Metrics = request.app.state.metrics
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        log.info(
            "request",
            extra={
                "request_id": request.state.request_id,
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "ms": round(seconds * 1e3, 3),
            },
        )
        return response
    finally:
        REQUEST_ID.reset(token)


class BodySizeLimit:
    """Pure ASGI middleware: refuse request headers over `max_header_bytes` in all with 431, and
    request bodies over `max_bytes` with 413, streamed or not."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int = 16 * 1024) -> None:
        self.app, self.max_bytes, self.max_header_bytes = app, max_bytes, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in raw_headers) > self.max_header_bytes:
            too_large = f"request headers are larger than {self.max_header_bytes} bytes in all; send shorter ones"
            await self._reject(scope, receive, send, 431, "headers_too_large", too_large)
            return
        headers = dict(raw_headers)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        # Read the whole body first (bounded by max_bytes), then replay it to the app.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int = 413,
        error_type: str = "payload_too_large",
        message: str | None = None,
    ) -> None:
        request = Request(scope, receive)
        request.state.request_id = scope.get("state", {}).get("request_id", uuid.uuid4().hex)
        message = message or f"request body is larger than {self.max_bytes} bytes; send a shorter query"
        await error_response(request, status, error_type, message)(scope, receive, send)
