"""pipeline/serving/server.py: what every jwtwatch service's HTTP server does before the app sees a request —
a deadline for the headers, a cap on their size, the admin bodies' deadline, the metrics listener. The app behind
is the real validator's."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.serving.web import metrics_app
from pipeline.validation.app import create_validator_app
from pipeline.validation.service import ValidatorService
from tests.support.alerts import Receiver
from tests.support.jwtkit import Issuer
from tests.support.servers import serve_app
from tests.support.validators import ADMIN, validator_service


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer.create()


@pytest.fixture(scope="module")
def service(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValidatorService]:
    with validator_service(issuer, tmp_path_factory.mktemp("data")) as service:
        yield service


@pytest.fixture(scope="module")
def url(service: ValidatorService) -> Iterator[str]:
    with serve_app(create_validator_app(service)) as base:
        yield base


# ----------------------------------------------------------------------- slow peers, big headers, metrics listener


def _address(base: str) -> tuple[str, int]:
    host, port = base.rsplit("://", 1)[1].split(":")
    return host, int(port)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it says first)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed as well
    return True


@pytest.fixture(scope="module")
def quick(service: ValidatorService) -> Iterator[str]:
    """The validator with a 1 s header deadline."""
    with serve_app(create_validator_app(service), header_timeout_s=1.0) as base:
        yield base


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /v1/val", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1"],
    ids=["nothing", "part of the request line", "no blank line", "part of a header"],
)
def test_a_request_whose_headers_do_not_arrive_in_time_is_cut_off(quick: str, sent: bytes) -> None:
    with socket.create_connection(_address(quick)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        assert _closed_within(sock, 10)
        assert time.monotonic() - started < 5  # the 1 s deadline, with room for a loaded machine


def test_the_deadline_holds_for_every_request_of_a_kept_alive_connection(quick: str) -> None:
    with socket.create_connection(_address(quick)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # Blank lines between requests are skipped by the parser without starting a request: trickled, they would
        # cancel uvicorn's keep-alive timer for ever. The deadline runs from the previous answer.
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 10:
                sock.sendall(b"\r\n")
                time.sleep(0.2)
        assert time.monotonic() - started < 5


def test_a_slow_but_honest_client_is_answered(quick: str) -> None:
    with socket.create_connection(_address(quick), timeout=10) as sock:
        for part in (b"GET /healthz HTT", b"P/1.1\r\nHost: x\r\n", b"X-A: 1\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.2)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)  # the next request starts late, but within its own deadline
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")


def test_the_h11_protocol_cuts_off_unfinished_headers_too(service: ValidatorService) -> None:
    from pipeline.serving.server import GuardedH11Protocol

    protocol = type("QuickH11", (GuardedH11Protocol,), {"header_timeout_s": 1.0})
    with serve_app(create_validator_app(service), http=protocol) as base:
        assert httpx.get(base + "/healthz").status_code == 200
        with socket.create_connection(_address(base)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1")
            started = time.monotonic()
            assert _closed_within(sock, 10) and time.monotonic() - started < 5


def test_a_header_block_over_the_cap_gets_431_and_the_connection_closes(url: str) -> None:
    from pipeline.serving.server import MAX_HEADER_BYTES

    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(2 * MAX_HEADER_BYTES // 4096):
                sock.sendall(b"a" * 4096)
        assert sock.recv(64).startswith(b"HTTP/1.1 431")
        assert _closed_within(sock, 10)
    # below the cap, headers are the app's business (an 8 KiB+ token gets the app's own 431 and a usage event)
    assert httpx.get(url + "/healthz", headers={"X-Big": "a" * (MAX_HEADER_BYTES // 2)}).status_code == 200


def _protocols() -> list[type]:
    from pipeline.serving.server import GuardedH11Protocol, guarded_protocol

    return [guarded_protocol(), GuardedH11Protocol]


@pytest.mark.parametrize("protocol", _protocols(), ids=["httptools", "h11"])
@pytest.mark.parametrize("split", ["one-write", "blank-line-straddles", "trickled"])
def test_headers_over_the_cap_never_reach_the_app_however_they_arrive(protocol: type, split: str) -> None:
    """A header block over the cap gets 431 before the app sees it, also when it arrives whole in one read (both
    parsers would otherwise parse it and dispatch the request); one just under the cap is the app's."""
    from pipeline.serving.server import MAX_HEADER_BYTES

    receiver = Receiver()  # records every request that reaches the app
    with serve_app(receiver.app(), http=protocol) as base:
        for size, expected in ((MAX_HEADER_BYTES + 1024, b"HTTP/1.1 431"), (MAX_HEADER_BYTES - 1024, b"HTTP/1.1 200")):
            head = b"POST /hook/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Big: "
            request = head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"
            with socket.create_connection(_address(base), timeout=10) as sock:
                with contextlib.suppress(OSError):  # the server may close while we still send
                    if split == "one-write":
                        sock.sendall(request)
                    elif split == "blank-line-straddles":
                        sock.sendall(request[:-2])
                        time.sleep(0.2)
                        sock.sendall(request[-2:])
                    else:
                        for start in range(0, len(request), 16384):
                            sock.sendall(request[start : start + 16384])
                            time.sleep(0.01)
                assert sock.recv(64).startswith(expected), (size, split)
    assert [r.path for r in receiver.requests] == ["/hook/probe"]  # only the request under the cap


def test_an_admin_body_that_does_not_arrive_in_time_gets_408(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.serving.web

    monkeypatch.setattr(pipeline.serving.web, "BODY_TIMEOUT_S", 1.0)
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/introspect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() + b"\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=abc"
        )
        started = time.monotonic()
        assert sock.recv(64).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 5
        assert _closed_within(sock, 10)


def test_the_metrics_listener_serves_metrics_and_nothing_else(service: ValidatorService, issuer: Issuer) -> None:
    from pipeline.serving.prefork import listening_socket
    from pipeline.serving.server import Server, uvicorn_config

    public, private = listening_socket("127.0.0.1", 0), listening_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{public.getsockname()[1]}"
    metrics_url = f"http://127.0.0.1:{private.getsockname()[1]}"
    app = create_validator_app(service)
    config = uvicorn_config(app, "127.0.0.1", 0, header_timeout_s=1.0, lifespan="off", timeout_graceful_shutdown=3)
    server = Server(config, metrics=(private, metrics_app(service.registry)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [public]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        forged = Issuer.create().token("ES256", headers={"kid": "unknown-to-it"})
        assert httpx.get(url + "/v1/validate", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 404
        scraped = httpx.get(metrics_url + "/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'reason="unknown_kid"' in scraped.text
        assert scraped.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(metrics_url + "/v1/validate").status_code == 404
        assert httpx.get(metrics_url + "/healthz").status_code == 404
        assert httpx.post(metrics_url + "/metrics").status_code == 405
        with socket.create_connection(("127.0.0.1", private.getsockname()[1])) as slow:  # the same guard
            slow.sendall(b"GET /metr")
            started = time.monotonic()
            assert _closed_within(slow, 10) and time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive()
    with pytest.raises(httpx.HTTPError):  # stopped with the server
        httpx.get(metrics_url + "/metrics", timeout=2)
