"""A validator service for the tests of its HTTP surfaces: real keys, a memory bus, a data dir of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.bus.memory import MemoryBus
from pipeline.validation import ValidatorConfig
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer

#: The admin bearer token of :func:`validator_service`.
ADMIN = "admin-token-for-tests-0123456789"


@contextmanager
def validator_service(issuer: Issuer, data_dir: Path) -> Iterator[ValidatorService]:
    """A service trusting ``issuer``'s keys, with the admin token :data:`ADMIN`; closed on leaving."""
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        data_dir=data_dir,
        bus=MemoryBus(),
        admin_token=ADMIN,
    )
    try:
        yield service
    finally:
        service.close()
