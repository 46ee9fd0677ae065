"""Network identity lookups (``--ip-db``): addresses resolved per second, as the detection engine would ask.

    python -m bench.ipdb [--networks 100000] [--lookups 200000] [--minutes 30] [--rounds 3] [--out F.json]

Builds, in a temporary directory, a GeoLite2-ASN-like MaxMind DB of ``--networks`` random IPv4 and IPv6
networks (/12 to /24 and /28 to /48, ASN and organisation as GeoLite2-ASN has them) and a GeoIP2-Anonymous-IP-like
one, then measures :class:`pipeline.networks.MmdbResolver`:

* **first sight** — ``--lookups`` distinct addresses, each resolved once (the memo never hits): the cost of a
  new address, one file and two files;
* **event stream** — the client addresses of a simulated stream (``jwtwatch simulate``'s default world, ``--minutes``
  long, every look-alike off) in event order, resolved through the world's own ``--ip-db-out`` file: what the
  engine pays per event, memo included (hit rate reported);
* for comparison, the /16 fallback (:data:`pipeline.networks.PREFIXES`) on the same stream, and bare
  ``maxminddb`` ``Reader.get`` on the first-sight addresses.

Each figure is lookups per second of CPU time (this thread's; wall time beside it), the median of ``--rounds``
rounds, each with a fresh resolver (the memo starts cold), after one round not counted that faults the files'
pages in.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import environment, write_report
from pipeline.networks import PREFIXES, MmdbResolver, open_ip_db
from pipeline.networks.base import _prefix_network
from pipeline.simulate import SimulationParams, simulate
from pipeline.simulate.io import write_ip_db
from tests.support.mmdbkit import write_mmdb

LIBRARIES = ("maxminddb", "mmdb-writer", "numpy")


def asn_database(path: Path, networks: int, seed: int) -> Path:
    """A GeoLite2-ASN-like file: ``networks`` random networks, 80 % IPv4, with an ASN and an organisation each."""
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, Any]] = {}
    while len(rows) < networks:
        if rng.random() < 0.8:
            length = int(rng.integers(12, 25))
            address = int(rng.integers(1 << 24, 224 << 24)) >> (32 - length) << (32 - length)
            cidr = str(ipaddress.IPv4Network((address, length)))
        else:
            length = int(rng.integers(28, 49))
            address = (0x2000 << 112 | int(rng.integers(0, 1 << 62)) << 50) >> (128 - length) << (128 - length)
            cidr = str(ipaddress.IPv6Network((address, length)))
        number = int(rng.integers(1000, 400_000))
        rows[cidr] = {"autonomous_system_number": number, "autonomous_system_organization": f"AS-ORG-{number}"}
    return write_mmdb(path, rows, database_type="GeoLite2-ASN")


def anonymous_database(path: Path, networks: int, seed: int) -> Path:
    rng = np.random.default_rng(seed + 1)
    flags = ("is_anonymous_vpn", "is_hosting_provider", "is_residential_proxy", "is_tor_exit_node")
    rows = {}
    for _ in range(networks):
        address = int(rng.integers(1 << 24, 224 << 24)) >> 8 << 8
        rows[str(ipaddress.IPv4Network((address, 24)))] = {"is_anonymous": True, str(rng.choice(flags)): True}
    return write_mmdb(path, rows, database_type="GeoIP2-Anonymous-IP")


def addresses(count: int, seed: int) -> list[str]:
    """Distinct random public-looking addresses, 80 % IPv4."""
    rng = np.random.default_rng(seed + 2)
    out: dict[str, None] = {}
    while len(out) < count:
        if rng.random() < 0.8:
            out[str(ipaddress.IPv4Address(int(rng.integers(1 << 24, 224 << 24))))] = None
        else:
            out[str(ipaddress.IPv6Address(0x2000 << 112 | int(rng.integers(0, 1 << 62)) << 50 | 1))] = None
    return list(out)


def rate(make: Callable[[], Callable[[str], Any]], ips: Sequence[str], rounds: int) -> dict[str, Any]:
    """Lookups per second of a fresh resolver over ``ips``: per second of this thread's CPU time (the headline: the
    machine is shared, and CPU time is what other work takes least from) and of wall time; median and range of
    the rounds, after one round not counted (it faults the file's pages in, as the first minutes of a service
    would)."""
    cpu_rates, wall_rates = [], []
    hit_rate = None
    for i in range(rounds + 1):
        _prefix_network.cache_clear()  # the /16 fallback's memo is module-wide: cold, like the resolver's
        resolve = make()
        wall, cpu = time.perf_counter(), time.thread_time()
        for ip in ips:
            resolve(ip)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        if i == 0:
            continue
        cpu_rates.append(len(ips) / cpu)
        wall_rates.append(len(ips) / wall)
        if isinstance(resolve, MmdbResolver):
            info = resolve.cache_info()
            hit_rate = info.hits / max(info.hits + info.misses, 1)
    median = statistics.median(cpu_rates)
    out: dict[str, Any] = {
        "lookups_per_cpu_s": round(median),
        "min": round(min(cpu_rates)),
        "max": round(max(cpu_rates)),
        "cpu_us_per_lookup": round(1e6 / median, 3),
        "lookups_per_wall_s": round(statistics.median(wall_rates)),
    }
    if hit_rate is not None:
        out["memo_hit_rate"] = round(hit_rate, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=100_000)
    parser.add_argument("--anonymous-networks", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", action="store_true", help="also print the report on stdout")
    args = parser.parse_args()
    console = Console(stderr=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        asn = asn_database(Path(tmp) / "asn.mmdb", args.networks, args.seed)
        anonymous = anonymous_database(Path(tmp) / "anonymous.mmdb", args.anonymous_networks, args.seed)
        build_s = time.perf_counter() - started
        sim = simulate(SimulationParams(minutes=args.minutes, seed=args.seed))
        world = Path(tmp) / "world.mmdb"
        write_ip_db(sim, world)
        stream = sim.events["ip"].tolist()
        fresh = addresses(args.lookups, args.seed)

        def files(*paths: Path) -> Callable[[], Callable[[str], Any]]:
            return lambda: open_ip_db(list(paths))

        import maxminddb

        reader = maxminddb.open_database(str(asn))
        results = {
            "first_sight_one_file": rate(files(asn), fresh, args.rounds),
            "first_sight_two_files": rate(files(asn, anonymous), fresh, args.rounds),
            "bare_maxminddb_get": rate(lambda: reader.get, fresh, args.rounds),
            "event_stream": rate(files(world), stream, args.rounds),
            "event_stream_prefix_fallback": rate(lambda: PREFIXES, stream, args.rounds),
        }
        reader.close()
        sizes = {"asn_mb": round(asn.stat().st_size / 1e6, 2), "anonymous_mb": round(anonymous.stat().st_size / 1e6, 2)}
    report = {
        "parameters": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
        "databases": {
            "asn_networks": args.networks,
            "anonymous_networks": args.anonymous_networks,
            **sizes,
            "build_s": round(build_s, 1),
            "world_networks": len(sim.networks),
        },
        "stream": {"events": len(stream), "distinct_addresses": len(set(stream))},
        "results": results,
        "environment": environment(*LIBRARIES),
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
    }
    table = Table("lookups", "per CPU s", "range", "CPU µs", "per wall s", "memo hits", title="--ip-db lookups")
    for name, r in results.items():
        hits = f"{r['memo_hit_rate']:.1%}" if "memo_hit_rate" in r else "-"
        table.add_row(name, f"{r['lookups_per_cpu_s']:,}", f"{r['min']:,}-{r['max']:,}", f"{r['cpu_us_per_lookup']}",
                      f"{r['lookups_per_wall_s']:,}", hits)  # fmt: skip
    console.print(table)
    console.print(
        f"{args.networks:,}-network ASN file ({sizes['asn_mb']} MB) + {args.anonymous_networks:,}-network anonymous-IP "
        f"file, built in {build_s:.0f} s; stream of {len(stream):,} events, {len(set(stream)):,} distinct addresses; "
        f"load average {report['load_average']['before'][0]} before, {report['load_average']['after'][0]} after"
    )
    write_report(report, str(args.out) if args.out else None, args.json)


if __name__ == "__main__":
    main()
