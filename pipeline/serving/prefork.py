"""A pre-fork supervisor: N forked worker processes accepting on one listening socket (``validator serve --workers N``).

The parent binds the socket, forks the workers and supervises them; it never serves, and starts no thread
before forking (a fork copies only the calling thread). What a worker runs is the caller's: ``worker(index)``
builds its own service — bus connection, revocation store connection, background loops — after the fork, then
serves on the inherited socket.

What the validator's workers share, and how (``docs/configuration.md``, "validator serve"):

- revocations: one SQLite store under the data dir; each worker reads what the others wrote every
  ~100 ms (:mod:`pipeline.revocations.store_sync`), and over Kafka each also follows the feed;
- usage events to ``--events-out``: one file opened ``O_APPEND``, whole lines per ``write(2)``;
- one-time tokens: their replay cache is shared over the bus only, so ``--workers > 1`` with one-time
  rules needs ``--kafka`` (refused otherwise);
- the metrics listener (``--metrics-port``): the parent binds it too and every worker accepts on it, serving
  its own metrics (``jwtwatch_validator_worker`` names it): each scrape sees one worker; scrape each or sum.

SIGTERM/SIGINT to the parent stop the workers gracefully (uvicorn's own shutdown); a worker that dies is
restarted, unless it dies within ``startup_s`` of being started (a configuration or port error): then
all stop and the parent exits with that worker's status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket for the workers to share (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _exit_code(error: BaseException) -> int:
    code = getattr(error, "exit_code", None)  # click/typer Exit
    if code is None and isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    return int(code) if code is not None else 1


def run_workers(count: int, worker: Callable[[int], object], *, startup_s: float = 10.0) -> int:
    """Fork ``count`` processes running ``worker(index)``; supervise them until they are all gone.

    Returns the exit status for the parent: 0 after a requested stop, else the status of the worker that
    failed at startup.
    """
    if threading.active_count() > 1:
        log.warning("forking with %d threads running: only the calling thread is copied", threading.active_count())
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at, monotonic)
    stopping = False
    status = 0

    def spawn(index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                worker(index)
            except BaseException as exc:  # the worker must leave through os._exit, whatever happens
                code = _exit_code(exc)
                if code and not hasattr(exc, "exit_code") and not isinstance(exc, SystemExit | KeyboardInterrupt):
                    traceback.print_exc()
                if isinstance(exc, KeyboardInterrupt):
                    code = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(count):
            spawn(index)
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index, started = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                continue
            if time.monotonic() - started < startup_s:
                log.error("worker %d exited with status %d while starting: stopping", index, code)
                status = code or 1
                stop(signal.SIGTERM, None)
                continue
            log.warning("worker %d (pid %d) exited with status %d: restarting it", index, pid, code)
            spawn(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


__all__ = ["listening_socket", "run_workers"]
