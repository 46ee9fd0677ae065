"""Tests that need something this machine may lack (a broker, nginx, SoftHSM2, a C compiler, root): skip saying
what is missing — or fail, where ``JWTWATCH_REQUIRE_<WHAT>=1`` says it must be there (as ``.ci/run`` sets)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def required(what: str) -> bool:
    """Whether ``JWTWATCH_REQUIRE_<what>=1``: a missing ``what`` is then a failure, not a skip."""
    return os.environ.get(f"JWTWATCH_REQUIRE_{what}", "").strip() == "1"


def skip_or_fail(what: str, reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it when ``JWTWATCH_REQUIRE_<what>=1``."""
    variable = f"JWTWATCH_REQUIRE_{what}"
    if required(what):
        pytest.fail(f"{variable}=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set {variable}=1 to make this a failure)")
