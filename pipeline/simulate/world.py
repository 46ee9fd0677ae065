"""The simulated world: random streams, string tables, address space, user agents and the API.

Everything here is built from a seeded :class:`numpy.random.Generator`; nothing reads the clock or the OS
entropy pool. Events are kept as integer codes into these tables until the very end (see ``mix``), which
is what makes generating millions of events cheap.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# ------------------------------------------------------------------------------------------ randomness


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per component, so that changing one part (say the threats) leaves the
    others (the baseline traffic) unchanged."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


_HEX_PAIRS = np.array(
    [ord(f"{i:02x}"[0]) | ord(f"{i:02x}"[1]) << 8 for i in range(256)], dtype="<u2"
)  # byte -> its two hex digits, as one little-endian uint16
_UUID_SLOTS = ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24))


def uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random version-4 UUID strings (object array), vectorised.

    Same result as ``str(uuid.UUID(int=<128 random bits>, version=4))`` for each row, drawn from ``rng``.
    """
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    chars = _HEX_PAIRS[raw].view(np.uint8).reshape(n, 32)
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for lo, hi, at in _UUID_SLOTS:
        text[:, at : at + hi - lo] = chars[:, lo:hi]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int64)
    strings = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))
    uuids: np.ndarray = strings.to_numpy(zero_copy_only=False)
    return uuids


class UniformPool:
    """Uniform draws for Python loops, taken from pre-drawn blocks (a call per draw would be slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096) -> None:
        self._rng = rng
        self._block = block
        self._values: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        if self._i >= len(self._values):
            self._values = self._rng.random(self._block).tolist()
            self._i = 0
        value = self._values[self._i]
        self._i += 1
        return value

    def between(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self()


# ------------------------------------------------------------------------------------------ strings


class Strings:
    """Interned strings: every string column of the output is a code into one table (``-1`` is null)."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self.values: list[str] = []

    def code(self, text: str) -> int:
        found = self._codes.get(text)
        if found is None:
            found = self._codes[text] = len(self.values)
            self.values.append(text)
        return found

    def codes(self, texts: list[str]) -> np.ndarray:
        return np.array([self.code(t) for t in texts], dtype=np.int32)

    def text(self, code: int) -> str | None:
        return None if code < 0 else self.values[code]

    def table(self) -> np.ndarray:
        """The values as an object array with ``None`` last, so that ``table[codes]`` maps ``-1`` to null."""
        out = np.empty(len(self.values) + 1, dtype=object)
        out[:-1] = self.values
        out[-1] = None
        return out


# ------------------------------------------------------------------------------------------ addresses

# First octets per kind of network. The lists are disjoint, so a /16 tells the kind of network apart and
# attacker networks never share a /16 with a benign user's home, office, carrier or data centre.
_FIRST_OCTETS: dict[str, tuple[int, ...]] = {
    "residential": (24, 50, 67, 68, 69, 70, 71, 73, 75, 76, 96, 97, 98, 99, 108, 2, 31, 46, 62, 77, 78, 79, 80, 81),
    "carrier": (107, 166, 174, 208, 39, 117),
    "office": (12, 63, 64, 65, 66, 204, 206, 209, 216),
    "datacenter": (3, 13, 18, 34, 35, 52, 54, 20, 40),
    "vpn": (138, 139, 143, 149, 156, 181, 190),
    "hosting": (45, 5, 185, 193, 194, 195, 91, 146, 157, 167),
    "proxy": (41, 102, 105, 110, 112, 113, 114, 115, 116, 119, 120, 121, 177, 179, 186, 187, 189, 200, 201),
}
_POOL_SIZES = {"residential": 40, "carrier": 8, "office": 12, "datacenter": 16, "vpn": 10, "hosting": 24, "proxy": 40}


@dataclass
class AddressSpace:
    """IPv4 addresses by network kind. ``prefix16[code]`` is the /16 of each interned address (or -1)."""

    strings: Strings
    rng: np.random.Generator
    prefixes: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> array of (a << 8 | b)
    prefix16: dict[int, int] = field(default_factory=dict)  # string code -> /16 as an int
    carrier_pools: list[np.ndarray] = field(default_factory=list)  # per carrier: egress address codes

    def __post_init__(self) -> None:
        for kind, octets in _FIRST_OCTETS.items():
            size = _POOL_SIZES[kind]
            firsts = self.rng.choice(np.array(octets), size=size)
            seconds = self.rng.integers(1, 255, size=size)
            pairs = np.unique((firsts.astype(np.int64) << 8) | seconds)  # sorted, distinct
            self.prefixes[kind] = pairs
        # Carriers: 4 operators, each egressing from CGNAT pools in two of the carrier /16s.
        carrier = self.prefixes["carrier"]
        for i in range(4):
            nets = carrier[[(2 * i) % len(carrier), (2 * i + 1) % len(carrier)]]
            self.carrier_pools.append(self.addresses_in(nets, 24))

    def address(self, prefix: int, host: int) -> int:
        a, b = prefix >> 8, prefix & 0xFF
        c, d = (host >> 8) & 0xFF, 1 + (host & 0xFF) % 254
        code = self.strings.code(f"{a}.{b}.{c}.{d}")
        self.prefix16[code] = prefix
        return code

    def addresses_in(self, prefixes: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` addresses spread over the given /16s (drawn from ``rng``, else the space's own stream)."""
        rng = self.rng if rng is None else rng
        nets = rng.choice(prefixes, size=n)
        hosts = rng.integers(256, 65535, size=n)
        return np.array([self.address(int(p), int(h)) for p, h in zip(nets, hosts, strict=True)], dtype=np.int32)

    def random(self, kind: str, n: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.addresses_in(self.prefixes[kind], n, rng)

    def one(self, kind: str, exclude_prefixes: set[int] | frozenset[int], rng: np.random.Generator) -> int:
        """One address of a network kind, outside the given /16s."""
        candidates = np.array([p for p in self.prefixes[kind] if int(p) not in exclude_prefixes])
        if candidates.size == 0:  # cannot happen with the disjoint pools, but never loop forever
            candidates = self.prefixes[kind]
        return int(self.addresses_in(candidates, 1, rng)[0])

    def prefix_of(self, codes: np.ndarray) -> set[int]:
        return {self.prefix16.get(int(c), -1) for c in np.unique(codes)}


# ------------------------------------------------------------------------------------------ user agents

_CHROME = {
    "win": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "linux": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
}
_FIREFOX = {
    "win": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "linux": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
}
_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{v} Safari/605.1.15"
)
_EDGE = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0"
)

BROWSER_FAMILIES: tuple[str, ...] = ("Chrome", "Firefox", "Safari", "Edge")
_FAMILY_WEIGHTS = np.array([0.60, 0.13, 0.15, 0.12])


def browser_ua(rng: np.random.Generator, family: str) -> str:
    os_name = str(rng.choice(["win", "win", "win", "mac", "mac", "linux"]))
    if family == "Chrome":
        return _CHROME[os_name].format(v=int(rng.integers(120, 127)))
    if family == "Firefox":
        return _FIREFOX[os_name].format(v=int(rng.integers(121, 128)))
    if family == "Safari":
        return _SAFARI.format(v=str(rng.choice(["17.0", "17.1", "17.2.1", "17.3", "17.4", "17.4.1", "17.5"])))
    return _EDGE.format(v=int(rng.integers(120, 127)))


def browser_family(rng: np.random.Generator, exclude: str | None = None) -> str:
    weights = _FAMILY_WEIGHTS.copy()
    if exclude in BROWSER_FAMILIES:
        weights[BROWSER_FAMILIES.index(exclude)] = 0.0
    return str(rng.choice(BROWSER_FAMILIES, p=weights / weights.sum()))


_IOS_DEVICES = ("iPhone14,5", "iPhone15,2", "iPhone15,3", "iPhone16,1", "iPhone16,2", "iPad13,4")
_ANDROID_DEVICES = ("Pixel 7", "Pixel 8", "SM-S918B", "SM-A546B", "moto g54", "2201116SG")


def mobile_ua(rng: np.random.Generator, ios: bool) -> str:
    app = str(rng.choice(["5.0.3", "5.1.0", "5.2.0", "5.2.1", "5.2.1", "5.2.2"]))
    if ios:
        os_v = str(rng.choice(["16.7", "17.2", "17.3.1", "17.4", "17.4.1", "17.5"]))
        return f"ExampleApp/{app} (iOS {os_v}; {rng.choice(_IOS_DEVICES)})"
    os_v = str(rng.choice(["12", "13", "14", "14"]))
    return f"ExampleApp/{app} (Android {os_v}; {rng.choice(_ANDROID_DEVICES)})"


SERVICE_UAS: tuple[str, ...] = (
    "python-httpx/0.27.0",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
    "Apache-HttpClient/5.3.1 (Java/17.0.10)",
    "axios/1.6.8",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
)
SCRIPT_UAS: tuple[str, ...] = (
    "python-requests/2.31.0",
    "curl/8.5.0",
    "Go-http-client/1.1",
    "PostmanRuntime/7.36.3",
    "python-httpx/0.26.0",
    "Wget/1.21.4",
)
PROBE_UAS: tuple[str, ...] = (
    "python-requests/2.31.0",
    "curl/8.4.0",
    "Mozilla/5.0 (compatible; Nuclei - Open-source project (github.com/projectdiscovery/nuclei))",
    "Go-http-client/1.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
)

SERVICE_NAMES: tuple[str, ...] = (
    "billing",
    "inventory",
    "shipping",
    "notifications",
    "search-indexer",
    "reports",
    "fraud-scoring",
    "payments",
    "crm-sync",
    "analytics",
    "recommendations",
    "email-sender",
    "ledger",
    "catalog-import",
    "returns",
    "tax",
    "loyalty",
    "audit-export",
    "pricing",
    "warehouse-bridge",
)


def service_name(i: int) -> str:
    base = SERVICE_NAMES[i % len(SERVICE_NAMES)]
    return f"svc-{base}" if i < len(SERVICE_NAMES) else f"svc-{base}-{i // len(SERVICE_NAMES) + 1}"


# ------------------------------------------------------------------------------------------ the API

# (method, path template, weight for browsers, weight for mobile). "{id}" paths take an id from a pool.
_USER_ENDPOINTS: tuple[tuple[str, str, float, float], ...] = (
    ("GET", "/v1/profile", 0.12, 0.08),
    ("GET", "/v1/orders", 0.14, 0.10),
    ("GET", "/v1/orders/{id}", 0.12, 0.10),
    ("POST", "/v1/orders", 0.03, 0.03),
    ("GET", "/v1/products", 0.12, 0.08),
    ("GET", "/v1/products/{id}", 0.18, 0.14),
    ("GET", "/v1/cart", 0.08, 0.06),
    ("PUT", "/v1/cart", 0.04, 0.04),
    ("DELETE", "/v1/cart/items/{id}", 0.01, 0.01),
    ("GET", "/v1/notifications", 0.08, 0.14),
    ("POST", "/v1/payments", 0.01, 0.01),
    ("GET", "/v1/recommendations", 0.07, 0.06),
    ("GET", "/v1/feed", 0.0, 0.12),
    ("POST", "/v1/devices", 0.0, 0.03),
)
_SERVICE_ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("GET", "/internal/v1/orders"),
    ("POST", "/internal/v1/invoices"),
    ("GET", "/internal/v1/inventory/{id}"),
    ("POST", "/internal/v1/events"),
    ("GET", "/internal/v1/users/{id}"),
    ("PUT", "/internal/v1/shipments/{id}"),
    ("POST", "/internal/v1/search/index"),
    ("GET", "/internal/v1/prices"),
    ("POST", "/internal/v1/ledger/entries"),
)
_PROBE_ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("GET", "/v1/profile"),
    ("GET", "/v1/admin/users"),
    ("GET", "/v1/admin/config"),
    ("GET", "/v1/orders"),
    ("DELETE", "/v1/admin/users/{id}"),
)
_IDS_PER_TEMPLATE = 400


@dataclass
class Api:
    """The protected API. An endpoint code maps to (method, path); templated paths get an id pool."""

    strings: Strings
    rng: np.random.Generator
    method: list[int] = field(default_factory=list)
    path: list[int] = field(default_factory=list)
    _templates: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # -> (first code, count)

    def __post_init__(self) -> None:
        every = (
            [(m, p) for m, p, _, _ in _USER_ENDPOINTS]
            + list(_SERVICE_ENDPOINTS)
            + [e for e in _PROBE_ENDPOINTS if e not in [(m, p) for m, p, _, _ in _USER_ENDPOINTS]]
        )
        for method, template in every:
            self._add(method, template)
        w = np.array([[b, m] for _, _, b, m in _USER_ENDPOINTS])
        self.user_templates = [(m, p) for m, p, _, _ in _USER_ENDPOINTS]
        self.browser_weights = w[:, 0] / w[:, 0].sum()
        self.mobile_weights = w[:, 1] / w[:, 1].sum()
        self.service_templates = list(_SERVICE_ENDPOINTS)
        self.probe_templates = list(_PROBE_ENDPOINTS)

    def _add(self, method: str, template: str) -> None:
        if (method, template) in self._templates:
            return
        first = len(self.method)
        if "{id}" in template:
            ids = np.sort(self.rng.choice(np.arange(10_000, 1_000_000), size=_IDS_PER_TEMPLATE, replace=False))
            paths = [template.replace("{id}", str(i)) for i in ids]
        else:
            paths = [template]
        m = self.strings.code(method)
        for p in paths:
            self.method.append(m)
            self.path.append(self.strings.code(p))
        self._templates[(method, template)] = (first, len(paths))

    def sample(
        self, rng: np.random.Generator, templates: list[tuple[str, str]], n: int, p: np.ndarray | None = None
    ) -> np.ndarray:
        """``n`` endpoint codes: a template by weight ``p``, then an id uniformly from its pool."""
        which = rng.choice(len(templates), size=n, p=p)
        firsts = np.array([self._templates[t][0] for t in templates], dtype=np.int64)
        counts = np.array([self._templates[t][1] for t in templates], dtype=np.int64)
        offset = (rng.random(n) * counts[which]).astype(np.int64)
        return (firsts[which] + offset).astype(np.int32)

    def endpoint(self, method: str, template: str, index: int = 0) -> int:
        first, count = self._templates[(method, template)]
        return first + index % count

    def count(self, method: str, template: str) -> int:
        return self._templates[(method, template)][1]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.method, dtype=np.int32), np.array(self.path, dtype=np.int32)
