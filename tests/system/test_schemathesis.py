"""schemathesis against the OpenAPI schemas of the validator and the alerts service, in process (ASGI).

Every operation, with the admin token, gets generated requests; every answer must not be a server error and
must conform to the response schema the app declares for its status code.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from pipeline.alerts import AlertsService, create_alerts_app
from pipeline.bus.memory import MemoryBus
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer

ADMIN = "admin-token-schemathesis-0123456789"
CHECKS = [not_a_server_error, response_schema_conformance]
BOUNDED = settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
KEYS = Issuer.create()


@pytest.fixture(scope="module")
def validator_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValidatorService]:
    config = ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=KEYS.jwks())
    service = ValidatorService(
        config, data_dir=Path(tmp_path_factory.mktemp("validator")), bus=MemoryBus(), admin_token=ADMIN
    )
    yield service
    service.close()


@pytest.fixture(scope="module")
def validator_schema(validator_service: ValidatorService) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", create_validator_app(validator_service))


@pytest.fixture(scope="module")
def alerts_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    service = AlertsService(tmp_path_factory.mktemp("alerts"), admin_token=ADMIN, rng=random.Random(7), timeout_s=2.0)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_alerts_app(service))
    service.close()


def as_admin(case: schemathesis.Case) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = headers | {"authorization": f"Bearer {ADMIN}"}


def run_operations(schema: schemathesis.BaseSchema) -> list[str]:
    """Generated cases (valid, then invalid) for every operation; the checks raise on the first failure.

    By hand rather than with schemathesis's pytest plugin, which does not run under pytest 9.
    """
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @BOUNDED
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                as_admin(case)
                case.call_and_validate(checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                # An operation without inputs (or only an optional header) has no invalid request to make.
                if mode is GenerationMode.POSITIVE:
                    raise
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


def test_validator_api_conforms(validator_schema: schemathesis.BaseSchema) -> None:
    assert len(run_operations(validator_schema)) >= 8  # /metrics is not among them: it has a listener of its own


def test_alerts_api_conforms(alerts_schema: schemathesis.BaseSchema) -> None:
    assert len(run_operations(alerts_schema)) >= 8


def test_schemas_cover_every_route(
    validator_schema: schemathesis.BaseSchema, alerts_schema: schemathesis.BaseSchema
) -> None:
    # A control: the properties above really run against the apps' operations, bodies included.
    validator_paths = set(validator_schema.raw_schema["paths"])
    alerts_paths = set(alerts_schema.raw_schema["paths"])
    assert {"/v1/validate", "/v1/introspect", "/v1/revocations", "/.well-known/jwks.json"} <= validator_paths
    assert {"/v1/webhooks", "/v1/alerts", "/v1/deliveries", "/v1/deliveries/{delivery_id}/redeliver"} <= alerts_paths
    assert "requestBody" in validator_schema.raw_schema["paths"]["/v1/revocations"]["post"]
    assert "requestBody" in alerts_schema.raw_schema["paths"]["/v1/webhooks"]["post"]
