"""Where things are in the checkout, wherever the test module that asks sits under tests/."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the directory holding pipeline/ and tests/).
REPO = Path(__file__).resolve().parents[2]
#: The shipped model (`make model`'s recipe).
DEFAULT_MODEL = REPO / "models" / "default"
#: Files the tests read and do not make (the engine's golden output).
TEST_DATA = REPO / "tests" / "data"
