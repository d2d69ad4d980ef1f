"""Write the API's OpenAPI spec: `python -m app.openapi > docs/openapi.json` (a test fails when it drifts)."""

from __future__ import annotations

import json
from typing import Any

from app.main import create_app
from app.settings import ApiSettings


def spec() -> dict[str, Any]:
    """The live OpenAPI document (no index is opened to produce it)."""
    document: dict[str, Any] = create_app(ApiSettings()).openapi()
    return document


def main() -> None:
    print(json.dumps(spec(), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
