"""The detection engine: usage events in, alerts out — the one code path for streaming and replay.

The code is in ``pipeline/detection/_engine.py``. This module exports it from its compiled twin ``_engine_c`` where
that was built from the current sources, else from the source itself (see ``pipeline/_accel.py``).
"""

from pipeline import _accel

try:
    _accel.require_current_build()
    from pipeline.detection._engine_c import *  # type: ignore[import-not-found]  # noqa: F403
except ImportError:
    from pipeline.detection._engine import *  # noqa: F403
