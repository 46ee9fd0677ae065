"""Writing MaxMind DB files: the simulator's world (``jwtwatch simulate --ip-db-out``), tests and benchmarks.

A thin layer over ``mmdb-writer`` that makes its output reproducible and exact:

* the build epoch is the caller's, not the wall clock (``mmdb-writer`` stamps ``time.time()``);
* integers are stored as uint32 (as GeoLite2 stores ``autonomous_system_number``), one object per value:
  ``mmdb-writer``'s data cache keys values by equality, so ``True`` and ``1`` in one file would otherwise come
  back as whichever was written first;
* broader networks are inserted first, so that a more specific one is carved out of them whatever the order
  given;
* the file is written beside the target and moved into place.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.files import atomic_path

_UINT32 = 1 << 32


def write_mmdb(
    path: str | os.PathLike[str],
    networks: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    database_type: str,
    description: str,
    build_epoch: int,
    ip_version: int = 6,
) -> int:
    """Write ``(CIDR, record)`` pairs as a MaxMind DB; returns how many. ``ip_version`` 6 (the default, as GeoLite2)
    holds IPv4 networks in ``::/96``; 4 makes an IPv4-only file."""
    from mmdb_writer import MmdbU32, MMDBWriter
    from netaddr import IPSet

    class Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            return {**super()._build_meta(), "build_epoch": int(build_epoch)}

    numbers: dict[int, MmdbU32] = {}

    def typed(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): typed(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [typed(v) for v in value]
        if type(value) is int and 0 <= value < _UINT32:
            return numbers.setdefault(value, MmdbU32(value))
        return value

    writer = Writer(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
    )
    rows = sorted(((ipaddress.ip_network(cidr), record) for cidr, record in networks), key=_breadth)
    for network, record in rows:
        writer.insert_network(IPSet([str(network)]), typed(record))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, 0o644) as tmp:
        writer.to_db_file(str(tmp))
    return len(rows)


def _breadth(row: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Any]) -> int:
    """Depth in an IPv6 tree (an IPv4 /16 sits at 96 + 16); the order is the same in an IPv4-only one."""
    network = row[0]
    return network.prefixlen + (96 if network.version == 4 else 0)
