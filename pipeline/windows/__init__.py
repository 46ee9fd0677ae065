"""Event-time sliding windows per entity (a token, a subject, an IP) — pure, no I/O.

The code is in ``pipeline/windows/_windows.py``. This module exports it from its compiled twin ``_windows_c`` where
that was built from the current sources, else from the source itself (see ``pipeline/_accel.py``).
"""

from pipeline import _accel

try:
    _accel.require_current_build()
    from pipeline.windows._windows_c import *  # type: ignore[import-not-found]  # noqa: F403
except ImportError:
    from pipeline.windows._windows import *  # noqa: F403
