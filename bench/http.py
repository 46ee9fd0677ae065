"""Forward-auth over HTTP: ``GET /v1/validate`` under a fixed concurrency, driven by wrk (not a Python client).

    python -m bench.http [--workers 2 1] [--connections 64] [--duration 15] [--rounds 3] [--out F.json]

Starts ``jwtwatch validator serve --workers N`` on 127.0.0.1 with a fresh key store (``jwtwatch keys init``),
checks one token from ``jwtwatch token issue`` end to end, warms up, then runs
``wrk -t2 -c64 -d15s --latency`` with a Lua script sending 1,000 distinct valid tokens round-robin (the
verified-token cache sees realistic reuse). Reports Requests/sec and the 99th percentile latency, the median
and range over ``--rounds``. A first-seen variant (every request a token never seen before, so every one is
verified cryptographically) runs once per worker count, for information.

The headline figures ``http_validate_rps`` / ``http_validate_p99_ms`` are the round-robin medians for the
first ``--workers`` value. Target (issue): >= 5,000 req/s with p99 <= 10 ms at 64 connections on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.machine import environment, machine_line, write_report

ISSUER = "https://issuer.bench.test"
AUDIENCE = "https://api.bench.test"
JWTWATCH = [sys.executable, "-m", "pipeline.cli"]

LUA = r"""
-- Round-robin over the tokens in $JWTWATCH_TOKENS; thread k of n uses tokens k, k+n, k+2n, ...
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  tokens = {}
  for line in io.lines(os.getenv("JWTWATCH_TOKENS")) do tokens[#tokens + 1] = line end
  nthreads = tonumber(os.getenv("JWTWATCH_THREADS"))
  i = id
end
function request()
  local token = tokens[(i % #tokens) + 1]
  i = i + nthreads
  return wrk.format("GET", "/v1/validate", {["Authorization"] = "Bearer " .. token})
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/sec, the latency percentiles, the request count and errors from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    percentiles = {p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)}
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": percentiles.get("50"),
        "p90_ms": percentiles.get("90"),
        "p99_ms": percentiles.get("99"),
        "requests": int(requests.group(1)) if requests else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Validator:
    """``jwtwatch validator serve --workers N`` in a subprocess of its own process group."""

    def __init__(self, workdir: Path, keys: Path, workers: int, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = workdir / f"data-{workers}-{self.port}"
        argv = [
            *JWTWATCH, "validator", "serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--keys-dir", str(keys),
            "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data), "--workers", str(workers),
            *extra,
        ]  # fmt: skip
        self.log = open(workdir / f"validator-{workers}-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"validator did not become ready; see {self.log.name}")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def wrk(url: str, script: Path, tokens: Path, *, threads: int, connections: int, duration: int) -> dict[str, Any]:
    env = {**os.environ, "JWTWATCH_TOKENS": str(tokens), "JWTWATCH_THREADS": str(threads)}
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    return parse_wrk(out)


def issue_tokens(keys: Path, count: int, *, ttl: int = 3600) -> list[str]:
    from pipeline.keys import KeyStore

    store = KeyStore.open(keys)
    return [
        store.issue_token(f"user-{n % 5000}", AUDIENCE, ttl=ttl, client_id="bench", scope="read write")
        for n in range(count)
    ]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per worker count (median, range)")
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens sent round-robin")
    parser.add_argument("--first-seen-tokens", type=int, default=60_000, help="0: skip the first-seen variant")
    parser.add_argument("--first-seen-duration", type=int, default=8)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra argument for validator serve")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    libs = ("uvicorn", "uvloop", "httptools", "fastapi")
    env = environment(*libs)
    results: dict[str, Any] = {"wrk": wrk_version, "environment": env, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jwtwatch-bench-http-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        subprocess.run([*JWTWATCH, "keys", "init", "--dir", str(keys), "--issuer", ISSUER], check=True,
                       capture_output=True)  # fmt: skip
        one = subprocess.run(
            [*JWTWATCH, "token", "issue", "--dir", str(keys), "--sub", "alice", "--aud", AUDIENCE, "--ttl", "3600"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        script = work / "tokens.lua"
        script.write_text(LUA)
        reuse = work / "reuse.txt"
        reuse.write_text("\n".join(issue_tokens(keys, args.tokens)) + "\n")
        fresh = work / "fresh.txt"
        if args.first_seen_tokens:
            fresh.write_text("\n".join(issue_tokens(keys, args.first_seen_tokens)) + "\n")
        for workers in args.workers:
            server = Validator(work, keys, workers, args.serve_arg)
            try:
                answer = httpx.get(server.url + "/v1/validate", headers={"Authorization": f"Bearer {one}"})
                assert answer.status_code == 200 and answer.headers["x-auth-subject"] == "alice", answer
                denied = httpx.get(server.url + "/v1/validate", headers={"Authorization": "Bearer x.y.z"})
                assert denied.status_code == 401, denied
                run = dict(threads=args.threads, connections=args.connections)
                wrk(server.url, script, reuse, duration=args.warmup, **run)
                rounds = [wrk(server.url, script, reuse, duration=args.duration, **run) for _ in range(args.rounds)]
                entry: dict[str, Any] = {
                    "rounds": rounds,
                    "rps": summary([r["rps"] for r in rounds]),
                    "p99_ms": summary([r["p99_ms"] for r in rounds]),
                }
                if args.first_seen_tokens:
                    first = wrk(server.url, script, fresh, duration=args.first_seen_duration, **run)
                    first["wrapped"] = (first["requests"] or 0) > args.first_seen_tokens  # then some were cache hits
                    entry["first_seen"] = first
                results[f"workers_{workers}"] = entry
                line = (
                    f"workers={workers}: {entry['rps']['median']:,.0f} req/s "
                    f"({entry['rps']['min']:,.0f}-{entry['rps']['max']:,.0f}), p99 {entry['p99_ms']['median']:.2f} ms "
                    f"({entry['p99_ms']['min']:.2f}-{entry['p99_ms']['max']:.2f})"
                )
                if args.first_seen_tokens:
                    first_seen = entry["first_seen"]
                    line += f"; first-seen {first_seen['rps']:,.0f} req/s, p99 {first_seen['p99_ms']:.2f} ms"
                print(line, file=sys.stderr)
            finally:
                server.stop()
    head = results[f"workers_{args.workers[0]}"]
    results = {
        "http_validate_rps": round(head["rps"]["median"], 1),
        "http_validate_p99_ms": round(head["p99_ms"]["median"], 2),
        "workers": args.workers[0],
        "connections": args.connections,
        "duration_s": args.duration,
        "distinct_tokens": args.tokens,
        "load_after": os.getloadavg(),
        **results,
    }
    print(machine_line(env, *libs) + f" · {wrk_version}", file=sys.stderr)
    write_report(results, args.out, to_stdout=True)


if __name__ == "__main__":
    main()
