"""Property-based contract test of the live server: schemathesis generates requests for every route
from the committed OpenAPI spec; no response may be a 5xx, and every response must match the spec."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.openapi import spec
from tests.test_e2e import serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
schema = schemathesis.openapi.from_dict(spec())
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, classifier_index: Path) -> Iterator[str]:
    log = tmp_path_factory.mktemp("schemathesis") / "server.log"
    queue = f"schemathesis-{uuid.uuid4().hex}"
    with serve(classifier_index, log, EXEMPLAR_REDIS_URL="redis://127.0.0.1:6379/14", EXEMPLAR_QUEUE=queue) as url:
        yield url


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_route_conforms_to_the_spec(case: schemathesis.Case, live: str) -> None:
    case.call_and_validate(base_url=live, checks=CHECKS)
