"""TLS on every HTTP service: HTTPS served directly (TLS 1.2 minimum, forward-secret AEAD suites), and plain HTTP
only on loopback or behind trusted proxies — each service started as a user would, connected to over real TLS
with a certificate made in the test (tests/support/tls.py)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pipeline.errors import TransportError
from pipeline.serving.server import background_server
from pipeline.serving.tls import choose_transport, server_context
from tests.support.cli import AUDIENCE, ISSUER, JWTWATCH, run
from tests.support.ports import free_port
from tests.support.servers import stop_process
from tests.support.tls import TlsFiles, make_tls

ADMIN = "tls-test-admin-token-0123456789"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "keys"
    run("keys", "init", "--dir", str(directory), "--alg", "ES256", "--issuer", ISSUER)
    return directory


def client_context(
    tls: TlsFiles, lowest: ssl.TLSVersion, highest: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0"
) -> ssl.SSLContext:
    """A client that verifies our CA and offers exactly the versions (and TLS 1.2 suites) given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls.ca)
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point of offering them
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = lowest
        context.maximum_version = highest
    context.set_ciphers(ciphers)  # SECLEVEL=0: the client must not be the one refusing old protocols
    return context


def handshake(url: str, context: ssl.SSLContext) -> tuple[str, str] | None:
    """(protocol version, cipher) of a completed handshake, or None if the server refused it."""
    host, port = url.split("//")[1].rsplit(":", 1)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            version, cipher = conn.version(), conn.cipher()
            assert version is not None and cipher is not None
            return version, cipher[0]
    except (ssl.SSLError, ConnectionError):
        return None


def tls11(tls: TlsFiles) -> ssl.SSLContext:
    return client_context(tls, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


def tls12(tls: TlsFiles, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    return client_context(tls, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ciphers)


def tls13(tls: TlsFiles) -> ssl.SSLContext:
    return client_context(tls, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


# ----------------------------------------------------------------------------------- the services


@dataclass
class Service:
    url: str
    output: str


@contextmanager
def _start(args: list[str], url: str, verify: ssl.SSLContext | bool, data: Path) -> Iterator[Service]:
    env = {**os.environ, "JWTWATCH_ISSUER": ISSUER, "JWTWATCH_AUDIENCE": AUDIENCE, "JWTWATCH_DATA_DIR": str(data)}
    log = data.parent / f"{data.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*JWTWATCH, *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"jwtwatch {' '.join(args)} did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Service(url, log.read_text())
    finally:
        stop_process(proc)


SERVICES = {
    "validator": lambda keys, admin: ["validator", "serve", "--jwks-file", str(keys / "jwks.json")],
    "alerts": lambda keys, admin: ["alerts", "serve", "--admin-token-file", str(admin)],
    "serve": lambda keys, admin: ["serve", "--jwks-file", str(keys / "jwks.json")],
}


@pytest.fixture(scope="module", params=sorted(SERVICES))
def https_service(
    request: pytest.FixtureRequest, tls: TlsFiles, keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp(f"https-{request.param}")
    admin = directory / "admin-token"
    admin.write_text(ADMIN)
    admin.chmod(0o600)  # a secret file readable by others is refused
    port = free_port()
    args = [*SERVICES[request.param](keys, admin), "--port", str(port), "--tls-cert", str(tls.cert)]
    args += ["--tls-key", str(tls.key)]
    verify = ssl.create_default_context(cafile=str(tls.ca))
    with _start(args, f"https://127.0.0.1:{port}", verify, directory / "data") as service:
        yield service


def test_https_service_accepts_tls12_and_tls13(https_service: Service, tls: TlsFiles) -> None:
    assert "HTTPS (TLS 1.2 minimum)" in https_service.output  # the start-up log says which mode
    assert f"on {https_service.url}" in https_service.output
    v12 = handshake(https_service.url, tls12(tls))
    v13 = handshake(https_service.url, tls13(tls))
    assert v12 is not None and v12[0] == "TLSv1.2" and v12[1].startswith("ECDHE-") and "GCM" in v12[1]
    assert v13 is not None and v13[0] == "TLSv1.3"
    answer = httpx.get(f"{https_service.url}/healthz", verify=tls12(tls))
    assert answer.status_code == 200
    assert "max-age=31536000" in answer.headers["strict-transport-security"]


def test_https_service_refuses_tls11(https_service: Service, tls: TlsFiles) -> None:
    assert handshake(https_service.url, tls11(tls)) is None


def test_https_service_refuses_weak_tls12_suites(https_service: Service, tls: TlsFiles) -> None:
    # CBC with SHA-1, and no forward secrecy: both offered alone, both refused.
    assert handshake(https_service.url, tls12(tls, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")) is None
    assert handshake(https_service.url, tls12(tls, "AES128-GCM-SHA256:@SECLEVEL=0")) is None


def test_https_service_refuses_plain_http(https_service: Service) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(https_service.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_a_token_is_validated_over_https(tls: TlsFiles, keys: Path, tmp_path: Path) -> None:
    port = free_port()
    args = ["validator", "serve", "--jwks-file", str(keys / "jwks.json"), "--port", str(port)]
    args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--require-tls"]
    verify = ssl.create_default_context(cafile=str(tls.ca))
    with _start(args, f"https://127.0.0.1:{port}", verify, tmp_path / "data") as service:
        token = run("token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", AUDIENCE).stdout.strip()
        ok = httpx.get(f"{service.url}/v1/validate", headers={"Authorization": f"Bearer {token}"}, verify=verify)
        assert ok.status_code == 200 and ok.headers["x-auth-subject"] == "alice"
        bad = httpx.get(f"{service.url}/v1/validate", headers={"Authorization": f"Bearer {token}x"}, verify=verify)
        assert bad.status_code == 401


def test_the_test_client_can_speak_tls11_and_weak_suites(tls: TlsFiles) -> None:
    """Control: against a deliberately permissive server the same clients connect — so the refusals above
    are the services' own doing, not this machine's OpenSSL defaults."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.load_cert_chain(tls.cert, tls.key)
    with background_server(FastAPI(), tls=permissive) as url:
        assert handshake(url, tls11(tls)) is not None
        assert handshake(url, tls12(tls, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")) is not None
    with background_server(FastAPI(), tls=server_context(tls.cert, tls.key)) as url:
        assert handshake(url, tls11(tls)) is None


# -------------------------------------------------------------------------------- plain HTTP rules


def _refused(*args: str) -> subprocess.CompletedProcess[str]:
    result = run(*args, check=False, env={"JWTWATCH_ISSUER": ISSUER, "JWTWATCH_AUDIENCE": AUDIENCE})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_plain_http_on_a_public_address_refuses_to_start(service: str, keys: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN)
    admin.chmod(0o600)  # a secret file readable by others is refused
    args = [*SERVICES[service](keys, admin), "--host", "0.0.0.0", "--port", str(free_port())]
    result = _refused(*args, "--data-dir", str(tmp_path / "data"))
    assert "refusing to serve plain HTTP on the non-loopback address 0.0.0.0" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before any state was made


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_require_tls_refuses_plain_http_even_on_loopback(service: str, keys: Path, tmp_path: Path) -> None:
    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN)
    admin.chmod(0o600)  # a secret file readable by others is refused
    args = [*SERVICES[service](keys, admin), "--port", str(free_port()), "--require-tls"]
    result = _refused(*args, "--data-dir", str(tmp_path / "data"))
    assert "--require-tls" in result.stderr


def test_plain_http_on_loopback_says_so_at_start_up(keys: Path, tmp_path: Path) -> None:
    port = free_port()
    args = ["validator", "serve", "--jwks-file", str(keys / "jwks.json"), "--port", str(port)]
    with _start(args, f"http://127.0.0.1:{port}", False, tmp_path / "data") as service:
        assert "plain HTTP on loopback 127.0.0.1 only" in service.output


def test_transport_rules() -> None:
    assert choose_transport("127.0.0.1").scheme == "http"
    assert choose_transport("::1").scheme == "http"
    behind = choose_transport("0.0.0.0", trusted_proxies="10.0.0.0/8")
    assert behind.scheme == "http" and "10.0.0.0/8" in behind.mode and not behind.insecure
    with pytest.raises(TransportError, match="non-loopback"):
        choose_transport("10.1.2.3")
    with pytest.raises(TransportError, match="non-loopback"):
        choose_transport("0.0.0.0", trusted_proxies="  ")
    forced = choose_transport("0.0.0.0", insecure_http=True)
    assert forced.scheme == "http" and forced.insecure and "INSECURE" in forced.mode
    with pytest.raises(TransportError, match="--require-tls"):
        choose_transport("127.0.0.1", require_tls=True)


def test_certificate_problems_are_clear_errors(tls: TlsFiles, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="both --tls-cert and --tls-key"):
        choose_transport("127.0.0.1", tls_cert=tls.cert)
    with pytest.raises(TransportError, match="no such file"):
        choose_transport("127.0.0.1", tls_cert=tls.cert, tls_key=tmp_path / "missing.pem")
    other = make_tls(tmp_path)
    with pytest.raises(TransportError, match="cannot use the certificate"):
        server_context(tls.cert, other.key)  # a key that is not the certificate's
    context = server_context(tls.cert, tls.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert all(c["protocol"] == "TLSv1.3" or c["name"].startswith("ECDHE-") for c in context.get_ciphers())
