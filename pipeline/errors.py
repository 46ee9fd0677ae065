"""Every error jwtwatch raises on purpose, in one place, under one base class.

Catch :class:`JwtwatchError` for "jwtwatch said no"; catch a leaf for one cause. Each leaf also keeps the
built-in class it has always been (a :class:`RecordError` is still a :class:`ValueError`), so code that caught
the built-in goes on working. The tree::

    JwtwatchError
    ├── RecordError (ValueError)            a record could not be parsed; names the field
    ├── InsecureFileError (PermissionError) a secret file others could read or replace
    ├── RequestTimeout                      a request body that did not arrive in time (answered 408)
    ├── TransportError (ValueError)         a TLS/listen configuration the service must not start with
    ├── NodeError                           a node cannot start as configured; names the option at fault
    ├── DemoError                           the demo cannot run as asked
    ├── bus
    │   ├── CommitRejected (RuntimeError)   the group moved on before a commit; nothing was committed
    │   ├── KafkaBusError (RuntimeError)    Kafka could not do what was asked; the cause is chained
    │   │   └── KafkaCommitRejected         a Kafka commit lost to a rebalance (also a CommitRejected)
    │   └── Unavailable (RuntimeError)      a consumer's sink cannot take records now (not the record's fault)
    ├── keys and tokens
    │   ├── KeyStoreError                   an issuer key store missing, corrupt, or refusing an operation
    │   ├── JwksError (ValueError)          a JWK Set that cannot be used at all
    │   │   ├── JwksFetchError              a JWKS URL that gave no usable answer within its deadline
    │   │   └── RollbackError               a signed key set older than (or contradicting) the newest accepted
    │   └── RevocationsUnavailable (RuntimeError)  fail-closed with revocations possibly incomplete (503)
    ├── revocations
    │   ├── FeedError (ValueError)          a feed message that must change nothing (unsigned, forged, replayed)
    │   └── RevocationStoreError (RuntimeError)  a revocation that could not be stored: it is not in force
    ├── detection
    │   ├── ModelError                      a model directory missing, incomplete, tampered with or mismatched
    │   └── IpDbError (ValueError)          an ``--ip-db`` file that cannot be used
    └── alerts
        └── TargetError (ValueError)        a webhook URL (or an address it resolves to) jwtwatch will not send to

Not here: ``AdminDenied`` (``pipeline/validation/app.py``) is an HTTP answer (a FastAPI ``HTTPException``),
not an error of jwtwatch's own.
"""

from __future__ import annotations

__all__ = [
    "CommitRejected",
    "DemoError",
    "FeedError",
    "InsecureFileError",
    "IpDbError",
    "JwksError",
    "JwksFetchError",
    "JwtwatchError",
    "KafkaBusError",
    "KafkaCommitRejected",
    "KeyStoreError",
    "ModelError",
    "NodeError",
    "RecordError",
    "RequestTimeout",
    "RevocationStoreError",
    "RevocationsUnavailable",
    "RollbackError",
    "TargetError",
    "TransportError",
    "Unavailable",
]


class JwtwatchError(Exception):
    """The base of every error jwtwatch raises on purpose."""


# ------------------------------------------------------------------------------------------ records, files, HTTP


class RecordError(JwtwatchError, ValueError):
    """A record could not be parsed. ``field`` names the culprit, ``value`` is a short repr of it."""

    def __init__(self, record: str, field_name: str, value: object, problem: str) -> None:
        try:
            shown = repr(value)
        except RecursionError:  # JSON nested ~1000 deep: repr gives up, and the error must still be a RecordError
            shown = f"<{type(value).__name__} nested too deep to show>"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{record}: field {field_name!r} = {shown}: {problem}")
        self.record = record
        self.field = field_name
        self.value = value
        self.problem = problem


class InsecureFileError(JwtwatchError, PermissionError):
    """A secret file others could read or replace (or that is not a regular file): refused, with how to fix it."""


class RequestTimeout(JwtwatchError):
    """The request body did not arrive in time; ``pipeline.serving.web.install_error_handlers`` answers 408 and
    closes."""


class TransportError(JwtwatchError, ValueError):
    """The service must not start with this transport configuration; the message says why and what to do."""


class NodeError(JwtwatchError):
    """A node cannot start as configured. The message is for the operator: it names the option at fault."""


class DemoError(JwtwatchError):
    """The demo cannot run as asked (a data dir it will not overwrite, bad options)."""


# ------------------------------------------------------------------------------------------ bus


class CommitRejected(JwtwatchError, RuntimeError):
    """The group moved on (a rebalance) before a commit: nothing was committed, and the partitions' messages
    since the last commit will be delivered again — to this member or to the one that now owns them."""


class KafkaBusError(JwtwatchError, RuntimeError):
    """Kafka could not do what was asked (unreachable, timed out, rejected), whichever client library reads
    (kafka-python or confluent-kafka). The cause is chained."""


class KafkaCommitRejected(KafkaBusError, CommitRejected):
    """A commit lost to a rebalance (:class:`CommitRejected`); also a :class:`KafkaBusError`."""


class Unavailable(JwtwatchError, RuntimeError):
    """A component a consumer hands records to cannot take any now (closed, shutting down): not a record's fault."""


# ------------------------------------------------------------------------------------------ keys and tokens


class KeyStoreError(JwtwatchError):
    """Anything wrong with a key store: missing, corrupt, refused operation, bad argument."""


class JwksError(JwtwatchError, ValueError):
    """A JWK Set could not be used at all (not JSON, no usable key)."""


class JwksFetchError(JwksError):
    """The JWKS URL gave no usable answer: an HTTP error status, too large, or not complete within the deadline."""


class RollbackError(JwksError):
    """A signed key set that is valid but older than (or contradicts) the newest one already accepted."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: ``rollback`` (issued before the newest accepted set), ``conflict`` (same iat, other content) or
        #: ``state`` (the recorded mark cannot be read or written, so nothing newer can be proven)
        self.reason = reason


class RevocationsUnavailable(JwtwatchError, RuntimeError):
    """``fail_closed`` and the revocations may be incomplete: no token is vouched for (every surface answers 503)."""


# ------------------------------------------------------------------------------------------ revocations


class FeedError(JwtwatchError, ValueError):
    """A feed message that must change nothing: unsigned, forged, malformed or replayed."""


class RevocationStoreError(JwtwatchError, RuntimeError):
    """A revocation could not be stored (disk full, read-only or broken storage): it is not in force."""


# ------------------------------------------------------------------------------------------ detection, alerts


class ModelError(JwtwatchError):
    """A model directory is missing, incomplete, tampered with, or made for other features."""


class IpDbError(JwtwatchError, ValueError):
    """An ``--ip-db`` file that cannot be used; the message is one line naming the file."""


class TargetError(JwtwatchError, ValueError):
    """A webhook URL (or an address its host resolves to) that jwtwatch will not send to."""
