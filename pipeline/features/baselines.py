"""What is normal for a subject, a client and an IP — learned from the stream itself. Pure, no I/O.

The code is in ``pipeline/features/_baselines.py``. This module exports it from its compiled twin ``_baselines_c`` where
that was built from the current sources, else from the source itself (see ``pipeline/_accel.py``).
"""

from pipeline import _accel

try:
    _accel.require_current_build()
    from pipeline.features._baselines_c import *  # type: ignore[import-not-found]  # noqa: F403
except ImportError:
    from pipeline.features._baselines import *  # noqa: F403
