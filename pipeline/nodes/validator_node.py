"""``jwtwatch validator serve``: the validator as a process of its own — or as ``--workers`` forked processes
sharing its port, its data dir's revocation store and its metrics listener."""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from pipeline.bus.base import Bus
from pipeline.errors import JwksError, NodeError
from pipeline.loop import BackgroundLoop
from pipeline.nodes.key_trust import KeyTrust, TrustedKeys
from pipeline.nodes.resources import open_bus, open_feed_keys
from pipeline.nodes.running import Listener
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store_sync import RevocationStoreSync
from pipeline.serving.prefork import listening_socket, run_workers
from pipeline.serving.web import metrics_app, read_admin_token
from pipeline.validation.app import create_validator_app
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.key_sources import CombinedKeySource, KeySource
from pipeline.validation.service import ValidatorService


@dataclass(frozen=True, kw_only=True)
class TokenRules:
    """What a token must be to pass, as the options ``serve`` and ``validator serve`` share give it.

    :meth:`config` is the one place where the command line becomes a :class:`ValidatorConfig` (and is checked)."""

    issuer: str
    audience: str
    jwks_file: Path | None
    jwks_url: str | None
    algorithms: str
    require_typ: str | None
    leeway_s: int
    max_token_lifetime_s: int
    one_time_audiences: str | None
    one_time_scopes: str | None
    one_time_claims: str | None

    def config(self, *, jwks: dict[str, object] | None = None, jwks_ca_file: Path | None = None) -> ValidatorConfig:
        """Raises pydantic's ValidationError naming each field at fault."""
        # validated from the strings as given: the model splits the comma-separated lists and checks every field
        return ValidatorConfig.model_validate(
            {
                "issuer": self.issuer,
                "audience": self.audience,
                "jwks_file": self.jwks_file,
                "jwks_url": self.jwks_url,
                "jwks": jwks,
                "jwks_ca_file": jwks_ca_file,
                "algorithms": self.algorithms,
                "require_typ": self.require_typ,
                "leeway_s": self.leeway_s,
                "max_token_lifetime_s": self.max_token_lifetime_s,
                "one_time_audiences": self.one_time_audiences,
                "one_time_scopes": self.one_time_scopes,
                "one_time_claims": self.one_time_claims,
            }
        )


@dataclass(frozen=True, kw_only=True)
class ValidatorSettings:
    """``jwtwatch validator serve``'s options, as given (files not read yet)."""

    rules: TokenRules
    trust: KeyTrust
    data_dir: Path
    admin_token_file: Path | None = None
    events_out: Path | None = None
    trusted_proxies: str | None = None
    max_feed_lag_s: float = 30.0
    fail_closed: bool = False
    kafka: str | None = None
    revocation_keys: Path | None = None
    workers: int = 1


class ValidatorNode:
    """Checks the settings and opens the keys when built; :meth:`serve` then runs the validator until a signal.

    Each serving process (the one, or each worker after the fork) makes its own bus connection, key sources and
    :class:`ValidatorService`, follows the revocation feed (and the replay feed with one-time rules), and with
    workers reads the revocations its siblings stored in the shared store."""

    def __init__(self, settings: ValidatorSettings, *, bus_factory: Callable[[], Bus] | None = None) -> None:
        """Raises :class:`NodeError`, or ValidationError for the token rules, or ValueError/OSError for the admin
        token file. ``bus_factory``: the bus of each serving process (default: ``--kafka``'s, else in-process)."""
        self.settings = settings
        self._bus_factory = bus_factory or (lambda: open_bus(settings.kafka))
        self._keys = self._open_keys()
        try:
            self.config = replace(settings.rules, jwks_file=self._keys.jwks_file).config(
                jwks=self._keys.jwks, jwks_ca_file=settings.trust.ca_file
            )
            self.admin_token = read_admin_token(settings.admin_token_file)
            if settings.workers > 1 and self.config.one_time and settings.kafka is None:
                raise NodeError(
                    "--workers > 1 with one-time token rules needs --kafka: the workers share one-time uses over the "
                    "bus (jwtwatch.replay), and without one a token could be used once at each worker"
                )
            # Only a valid configuration gets keys, a bus connection and state on disk.
            feed = open_feed_keys(settings.revocation_keys, settings.kafka, settings.data_dir)
        except BaseException:
            self._keys.close()
            raise
        self._signer, self._verifier = feed.signer, feed.verifier()

    def serve(self, listener: Listener, *, on_error: Callable[[NodeError], NoReturn]) -> int:
        """Serve until SIGINT or SIGTERM; returns the exit status (that of a worker that failed to start, else 0).

        ``on_error`` reports a process that cannot start and ends it: in a forked worker an exception would only
        be a traceback (the CLI prints one line and exits with status 2)."""
        workers = self.settings.workers
        try:
            if workers == 1:
                self._serve_process(listener, self._keys.sources)
                return 0
            self._keys.close()  # the workers make their own
            sock = _listening_socket(listener.host, listener.port)
        except NodeError as exc:
            on_error(exc)

        def worker(index: int) -> None:
            try:
                # key sources of its own: no HTTP connection shared with the parent or a sibling
                self._serve_process(listener, self._open_keys().sources, sock=sock, worker=index)
            except NodeError as exc:
                on_error(exc)

        try:
            return run_workers(workers, worker)
        finally:
            sock.close()

    def _open_keys(self) -> TrustedKeys:
        rules, data_dir = self.settings.rules, self.settings.data_dir
        return self.settings.trust.open(rules.jwks_file, rules.jwks_url, rules.algorithms, data_dir)

    def _serve_process(
        self,
        listener: Listener,
        sources: list[KeySource],
        *,
        sock: socket.socket | None = None,
        worker: int | None = None,
    ) -> None:
        bus = self._bus_factory()
        try:
            service = self._service(bus, sources, worker)
        except BaseException:
            bus.close()
            raise
        follower = RevocationFollower(bus, service.revocations, verifier=self._verifier)
        service.feed = follower
        service.signer = self._signer
        loops = self._loops(service, follower)
        for loop in loops:
            loop.start()
        try:
            server = listener.server(create_validator_app(service), lambda: metrics_app(service.registry))
            # everything built so far lives as long as the process: keep it out of the collector's way
            gc.collect()
            gc.freeze()
            server.run(sockets=[sock] if sock is not None else None)
        finally:
            if service.store_sync is not None:
                service.store_sync.close()
            for loop in loops:
                loop.stop()
            follower.close()
            service.close()
            bus.close()

    def _service(self, bus: Bus, sources: list[KeySource], worker: int | None) -> ValidatorService:
        settings = self.settings
        try:
            service = ValidatorService(
                self.config,
                data_dir=settings.data_dir,
                bus=bus,
                events_out=settings.events_out,
                trusted_proxies=settings.trusted_proxies,
                admin_token=self.admin_token,
                max_feed_lag_s=settings.max_feed_lag_s,
                fail_closed=settings.fail_closed,
                # a lone validator's in-process bus has no reader for usage events: only --events-out gets them
                usage_to_bus=settings.kafka is not None,
                background=True,
                worker=worker,
                keys_dir=settings.trust.keys_dir,  # serves KEYS_DIR/jwks.jwt
            )
        except (JwksError, ValueError, OSError) as exc:
            raise NodeError(str(exc)) from exc
        if sources:
            # an inline copy stood in for the config only: the live sources replace it (a signed set that expires
            # must stop being trusted)
            base = [] if self._keys.jwks is not None else [service.validator.keys]
            # (KeySource declares generation and may_block as attributes; CombinedKeySource computes them)
            service.validator.keys = CombinedKeySource([*base, *sources])  # type: ignore[assignment]
        return service

    def _loops(self, service: ValidatorService, follower: RevocationFollower) -> list[BackgroundLoop]:
        # Every validator follows the revocation feed: what the pipeline or another validator revokes applies here.
        loops = [BackgroundLoop("revocation-feed", follower.step)]
        # One-time tokens used at other instances (jwtwatch.replay): only with --one-time-* rules.
        if service.replay_feed is not None:
            loops.append(BackgroundLoop("replay-feed", service.replay_feed.step))
        if service.worker is not None:
            # revocations the other workers stored (admin API) reach this one through the shared store
            service.store_sync = RevocationStoreSync(service.revocations)
            service.store_sync.sync()
            loops.append(BackgroundLoop("revocation-store", service.store_sync.step))

        def maintain() -> None:
            service.maintain()
            time.sleep(1.0)

        loops.append(BackgroundLoop("maintenance", maintain))
        return loops


def _listening_socket(host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise NodeError(f"cannot listen on {host}:{port}: {exc}") from exc
