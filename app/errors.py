"""The one mapping from core exceptions to HTTP statuses, and the handlers that apply it."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from exemplar.errors import (
    AuthenticationError,
    CapacityError,
    CostLimitError,
    DeadlineExceededError,
    ExemplarError,
    IndexIncompatibleError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)

log = logging.getLogger("exemplar.api")

STATUS: dict[type[ExemplarError], tuple[int, str]] = {  # subclasses before their bases
    DeadlineExceededError: (503, "deadline_exceeded"),
    CostLimitError: (413, "cost_limit"),
    InvalidInputError: (422, "invalid_input"),
    NotFoundError: (404, "not_found"),
    CapacityError: (413, "capacity"),
    IndexIncompatibleError: (409, "index_incompatible"),
    AuthenticationError: (401, "unauthorized"),
    UnavailableError: (503, "unavailable"),
    RateLimitedError: (429, "rate_limited"),
}


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def error_response(request: Request, status: int, error_type: str, message: str) -> JSONResponse:
    rid = request_id(request)
    return JSONResponse(
        {"error": message, "error_type": error_type, "request_id": rid},
        status_code=status,
        headers={"X-Request-ID": rid},
    )


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def json_problem(body: bytes, error: dict[str, Any]) -> str:
    """What is wrong with an unparsable JSON body, with the line and column in words."""
    loc = error.get("loc", ())
    offset = loc[-1] if loc and isinstance(loc[-1], int) else 0
    before = body[:offset].decode("utf-8", errors="replace")
    line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    reason = str((error.get("ctx") or {}).get("error", "not valid JSON"))
    return f"the request body is not valid JSON: {reason} at line {line}, column {column}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ExemplarError)
    async def exemplar_error(request: Request, exc: ExemplarError) -> JSONResponse:
        status, error_type = next((v for cls, v in STATUS.items() if isinstance(exc, cls)), (500, "internal"))
        response = error_response(request, status, error_type, str(exc))
        retry_after = getattr(exc, "retry_after", None)  # rate limits, deadlines
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        if isinstance(exc, CostLimitError):
            response.headers["X-Cost-Estimate-S"] = f"{exc.estimate_s:.3g}"
            response.headers["X-Cost-Limit-S"] = f"{exc.limit_s:g}"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        unparsable = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if unparsable is not None:
            return error_response(request, 400, "bad_request", json_problem(await request.body(), unparsable))
        messages = []
        for err in exc.errors():
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            messages.append(f"{_field(tuple(err.get('loc', ())))}: {msg}")
        return error_response(request, 422, "invalid_input", "; ".join(messages) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed: send a JSON object encoded as UTF-8"
        return error_response(request, exc.status_code, error_type, message)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request_id=%s)", request_id(request))
        return error_response(request, 500, "internal", "internal error; quote the request_id when reporting it")
