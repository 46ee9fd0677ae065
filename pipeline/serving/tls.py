"""How a jwtwatch HTTP service listens: HTTPS served directly, or plain HTTP only where that is safe.

Every HTTP service (``validator serve``, ``alerts serve``, ``serve``) decides its transport here, once, at
start-up, and says which one it chose:

- ``--tls-cert``/``--tls-key``: HTTPS on the port, TLS 1.2 at least; TLS 1.2 only with forward-secret AEAD
  suites (ECDHE with AES-GCM or ChaCha20-Poly1305), TLS 1.3 with its own (all AEAD); no compression, no
  renegotiation, no session tickets. Plain HTTP on that port fails at the handshake.
- without them, plain HTTP, but only on a loopback address, or behind the TLS-terminating proxies named in
  ``--trusted-proxies``; any other bind refuses to start unless ``--insecure-http`` says so explicitly.
- ``--require-tls`` refuses plain HTTP altogether: without a certificate the service does not start, even on
  loopback (for deployments where a missing setting must never mean a cleartext listener).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import TransportError
from pipeline.serving.server import is_loopback

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: TLS 1.2 suites: ephemeral ECDH (forward secrecy) and an AEAD cipher only — no CBC, no RSA key exchange,
#: no SHA-1 MACs. TLS 1.3 suites are not set by this string; OpenSSL's TLS 1.3 defaults are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1:!PSK:!SRP:!CAMELLIA:!ARIA"


def server_context(cert: Path, key: Path, *, key_password: str | None = None) -> ssl.SSLContext:
    """An SSL context for serving HTTPS with ``cert`` (PEM, the chain after the leaf) and ``key`` (PEM)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_TICKET  # no long-lived ticket key in memory undermining forward secrecy
    context.verify_mode = ssl.CERT_NONE  # clients authenticate with bearer tokens, not certificates
    context.set_alpn_protocols(["http/1.1"])
    for path, what in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not Path(path).is_file():
            raise TransportError(f"{what} {path}: no such file")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=key_password)
    except ssl.SSLError as exc:
        raise TransportError(f"cannot use the certificate {cert} with the key {key}: {exc.reason or exc}") from exc
    except OSError as exc:
        raise TransportError(f"cannot read the certificate or key: {exc}") from exc
    return context


@dataclass(frozen=True, slots=True)
class Transport:
    """The transport a service listens with, decided at start-up."""

    scheme: str  # "https" or "http"
    context: ssl.SSLContext | None
    mode: str  # one line for the start-up log
    insecure: bool = False  # plain HTTP on a non-loopback address without trusted proxies (--insecure-http)

    @property
    def tls(self) -> bool:
        return self.context is not None


def choose_transport(
    host: str,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    trusted_proxies: str | None = None,
    require_tls: bool = False,
    insecure_http: bool = False,
) -> Transport:
    """HTTPS with the given certificate, else plain HTTP where it is allowed; :class:`TransportError` if not."""
    if (tls_cert is None) != (tls_key is None):
        raise TransportError("give both --tls-cert and --tls-key, or neither")
    if tls_cert is not None and tls_key is not None:
        context = server_context(tls_cert, tls_key)
        return Transport("https", context, f"HTTPS (TLS 1.2 minimum) on {host}, certificate {tls_cert}")
    if require_tls:
        raise TransportError("--require-tls: plain HTTP is refused; give --tls-cert and --tls-key")
    if is_loopback(host):
        return Transport("http", None, f"plain HTTP on loopback {host} only (no --tls-cert)")
    if trusted_proxies and trusted_proxies.strip():
        return Transport(
            "http", None, f"plain HTTP on {host} behind the TLS-terminating proxies {trusted_proxies.strip()}"
        )
    if insecure_http:
        return Transport(
            "http", None, f"INSECURE plain HTTP on {host} without TLS or trusted proxies (--insecure-http)", True
        )
    raise TransportError(
        f"refusing to serve plain HTTP on the non-loopback address {host}: give --tls-cert and --tls-key, or "
        "--trusted-proxies naming the proxy that terminates TLS in front of it (or --insecure-http to insist)"
    )
