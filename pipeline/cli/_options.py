"""The options more than one command takes, declared once: the same name, variable, default and help everywhere.

Every option reads ``JWTWATCH_<NAME>`` from the environment (:func:`env`). An option that differs between commands
(another help text, variable or type) is declared where its command is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.keys import ALGORITHMS, read_secret_file


def env(name: str) -> str:
    return f"JWTWATCH_{name.upper().replace('-', '_')}"


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent.parent / "models" / "default"

# ------------------------------------------------------------------------------------------ state

DataDir = Annotated[Path, typer.Option("--data-dir", envvar=env("data_dir"), help="Where state is kept.")]
ModelDir = Annotated[
    Path,
    typer.Option("--model-dir", envvar=env("model_dir"), help="Model directory (default: the shipped model)."),
]
IpDb = Annotated[
    list[Path] | None,
    typer.Option(
        "--ip-db",
        envvar=env("ip_db"),
        help="MaxMind DB file (.mmdb) giving each client address its network: ASN and kind (GeoLite2-ASN, DB-IP "
        "ASN, GeoIP2 ISP / Connection-Type / Anonymous-IP, or your own with network_kind). Repeatable: for each "
        "field the first file that has it wins (in JWTWATCH_IP_DB, separate files with ':'). Without one, networks "
        "are /16 prefixes.",
    ),
]

# ------------------------------------------------------------------------------------ key stores

KeysDir = Annotated[Path, typer.Option("--dir", envvar=env("keys_dir"), help="The key store directory.")]
KeyAlg = Annotated[str, typer.Option(envvar=env("alg"), help=f"One of {', '.join(ALGORITHMS)}.")]
PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        envvar="JWTWATCH_KEYS_PASSPHRASE_FILE",
        help="File (mode 0600) holding the passphrase that encrypts the private keys at rest; "
        "or set JWTWATCH_KEYS_PASSPHRASE. Never on the command line.",
    ),
]
PinFile = Annotated[
    Path | None,
    typer.Option(
        envvar="JWTWATCH_PKCS11_PIN_FILE",
        help="For a key store in a PKCS#11 token (HSM): file (mode 0600) holding the token's user PIN; "
        "or set JWTWATCH_PKCS11_PIN. Never on the command line.",
    ),
]


def passphrase(file: Path | None) -> bytes | None:
    """--passphrase-file, else None: the key store then reads JWTWATCH_KEYS_PASSPHRASE(_FILE) itself."""
    return read_secret_file(file, "passphrase") if file is not None else None


def pin(file: Path | None) -> bytes | None:
    """--pin-file, else None: a PKCS#11 key store then reads JWTWATCH_PKCS11_PIN(_FILE) itself."""
    return read_secret_file(file, "PIN") if file is not None else None


# ---------------------------------------------------------------------------- token rules (validator)

Issuer = Annotated[str, typer.Option(envvar=env("issuer"), help="The exact iss tokens must carry.")]
Audience = Annotated[str, typer.Option(envvar=env("audience"), help="An audience aud must contain.")]
JwksFile = Annotated[Path | None, typer.Option(envvar=env("jwks_file"), help="JWKS file (re-read when it changes).")]
JwksUrl = Annotated[str | None, typer.Option(envvar=env("jwks_url"), help="JWKS https:// URL.")]
Algorithms = Annotated[str, typer.Option(envvar=env("algorithms"), help="Allowed algorithms, comma-separated.")]
RequireTyp = Annotated[str | None, typer.Option(envvar=env("require_typ"), help="'at+jwt' for strict RFC 9068 typing.")]
Leeway = Annotated[int, typer.Option(envvar=env("leeway"), help="Clock skew allowed, seconds.")]
MaxTokenLifetime = Annotated[
    int,
    typer.Option(
        envvar=env("max_token_lifetime"),
        help="Longest token lifetime (exp - iat) accepted, seconds; longer tokens are rejected (reason lifetime).",
    ),
]
OneTimeAudiences = Annotated[
    str | None,
    typer.Option(
        envvar=env("one_time_audiences"),
        help="Comma-separated audiences whose tokens are one-time: accepted once, a second use rejected (replayed).",
    ),
]
OneTimeScopes = Annotated[
    str | None,
    typer.Option(envvar=env("one_time_scopes"), help="Comma-separated scopes that make a token one-time."),
]
OneTimeClaims = Annotated[
    str | None,
    typer.Option(
        envvar=env("one_time_claims"),
        help="Comma-separated claims that make a token one-time: NAME (the claim is true) or NAME=VALUE.",
    ),
]
EventsOut = Annotated[
    Path | None, typer.Option(envvar=env("events_out"), help="Also append usage events to this JSONL file.")
]

# ------------------------------------------------------------------------------- HTTP services

Host = Annotated[str, typer.Option(envvar=env("host"), help="Address to listen on.")]
Port = Annotated[int, typer.Option(envvar=env("port"), help="Port to listen on.")]
TrustedProxies = Annotated[
    str | None, typer.Option(envvar=env("trusted_proxies"), help="CIDRs whose X-Forwarded-For is believed.")
]
_admin_token_file = typer.Option(
    envvar=env("admin_token_file"), help="File (mode 0600) holding the admin bearer token."
)
AdminTokenFile = Annotated[Path | None, _admin_token_file]
RequiredAdminTokenFile = Annotated[Path, _admin_token_file]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65535,
        envvar=env("metrics_port"),
        help="Serve Prometheus metrics (GET /metrics) on this port, apart from the service's port, which has none "
        "(default: no metrics). They count why tokens fail: keep them on loopback or a monitoring network.",
    ),
]
MetricsHost = Annotated[
    str, typer.Option(envvar=env("metrics_host"), help="Address of the metrics listener (--metrics-port).")
]
TlsCert = Annotated[
    Path | None,
    typer.Option(envvar=env("tls_cert"), help="Serve HTTPS with this PEM certificate (chain after the leaf)."),
]
TlsKey = Annotated[Path | None, typer.Option(envvar=env("tls_key"), help="The PEM private key of --tls-cert.")]
RequireTls = Annotated[
    bool,
    typer.Option(
        "--require-tls", envvar=env("require_tls"), help="Refuse plain HTTP altogether: no start without --tls-cert."
    ),
]
InsecureHttp = Annotated[
    bool,
    typer.Option(
        "--insecure-http",
        envvar=env("insecure_http"),
        help="Allow plain HTTP on a non-loopback address without --trusted-proxies (not for production).",
    ),
]

# ------------------------------------------------------------------------------------- the bus

_kafka = typer.Option(envvar=env("kafka"), help="Kafka bootstrap HOST:PORT.")
Kafka = Annotated[str | None, _kafka]
RequiredKafka = Annotated[str, _kafka]
#: The pipeline's consumer group (``pipeline run``; ``pipeline rekey`` reads in ``<group>-rekey``).
PipelineGroup = Annotated[
    str, typer.Option("--group", envvar=env("group"), help="Consumer group (share it to share work).")
]
DEFAULT_PIPELINE_GROUP = "jwtwatch-pipeline"
KafkaConsumerClient = Annotated[
    str,
    typer.Option(
        "--kafka-consumer",
        envvar=env("kafka_consumer"),
        help="Library that reads the usage topic: kafka-python, or confluent-kafka (librdkafka: records "
        "decoded in C, about 1.5x the events per second; pip install 'jwtwatch[confluent]').",
    ),
]
RevocationKeys = Annotated[
    Path | None,
    typer.Option(
        envvar=env("revocation_keys"),
        help="Key store (jwtwatch keys init --dir DIR) that signs and verifies the revocation feed; "
        "needed with --kafka. Default without Kafka: DATA_DIR/revocation-keys.",
    ),
]

# ---------------------------------------------------------------------- the revocation policy

AutoRevoke = Annotated[
    bool, typer.Option("--auto-revoke", envvar=env("auto_revoke"), help="Revoke tokens of severe alerts.")
]
RevokeMinSeverity = Annotated[
    str, typer.Option(envvar=env("revoke_min_severity"), help="Lowest severity that revokes.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", envvar=env("dry_run"), help="Decide revocations, carry none out.")]
AllowSubjects = Annotated[str | None, typer.Option(envvar=env("allow_subjects"), help="Never revoke these.")]
AllowClients = Annotated[str | None, typer.Option(envvar=env("allow_clients"), help="Never revoke these.")]
AllowCidrs = Annotated[
    str | None, typer.Option(envvar=env("allow_cidrs"), help="Never revoke for alerts from these networks.")
]
MaxRevocationsPerMinute = Annotated[
    int, typer.Option(envvar=env("max_revocations_per_minute"), help="Circuit breaker: then alert-only.")
]
