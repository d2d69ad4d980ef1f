"""The API's routes, one router per area; `app.main.create_app` includes them in this order.

`ERRORS` is the error body every route documents for its error statuses.
"""

from __future__ import annotations

from typing import Any

from app.schemas import ErrorBody

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 500, 503)
}
