"""The validator in front of an API the way users deploy it: nginx `auth_request` (Debian's nginx)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.bus import TOKEN_USAGE
from pipeline.bus.memory import MemoryBus
from pipeline.events import TokenUsage
from pipeline.validation import ValidatorConfig
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.jwtkit import AUDIENCE, ISSUER, Issuer
from tests.support.nginx import CONF
from tests.support.ports import free_port
from tests.support.require import skip_or_fail
from tests.support.servers import serve_app

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Issuer, MemoryBus]]:
    if NGINX is None:
        skip_or_fail("NGINX", "nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("nginx")
    issuer = Issuer.create()
    bus = MemoryBus()
    service = ValidatorService(
        ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()),
        data_dir=tmp / "data",
        bus=bus,
        trusted_proxies="127.0.0.1/32",
    )
    port, api_port = free_port(), free_port()
    with serve_app(create_validator_app(service)) as validator:
        (tmp / "nginx.conf").write_text(CONF.format(tmp=tmp, port=port, api_port=api_port, validator=validator))
        proc = subprocess.Popen([NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield url, issuer, bus
        proc.terminate()
        proc.wait(timeout=10)
    service.close()


def test_a_good_token_passes_the_gateway(gateway) -> None:
    url, issuer, bus = gateway
    response = httpx.get(f"{url}/api/orders?id=7", headers={"Authorization": f"Bearer {issuer.token(sub='alice')}"})
    assert response.status_code == 200
    assert response.text == "hello alice\n"
    events = [TokenUsage.from_json(m.value) for m in bus.consumer([TOKEN_USAGE], "good").poll(100, 0.5)]
    accepted = [e for e in events if e.outcome == "accepted"]
    assert accepted and (accepted[-1].method, accepted[-1].path) == ("GET", "/api/orders?id=7")


@pytest.mark.parametrize("auth", [None, "Bearer not-a-token", "forged"])
def test_anything_else_is_stopped_at_the_gateway(gateway, auth: str | None) -> None:
    url, _, _ = gateway
    headers = {}
    if auth == "forged":
        headers["Authorization"] = f"Bearer {Issuer.create().token(sub='alice')}"
    elif auth:
        headers["Authorization"] = auth
    response = httpx.get(f"{url}/api/orders", headers=headers)
    assert response.status_code == 401
    assert "hello" not in response.text
