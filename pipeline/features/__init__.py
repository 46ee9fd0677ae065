"""Behavioural features of a window — one definition for training, streaming and batch. Pure, no I/O.

The code is in ``pipeline/features/_features.py``. This module exports it from its compiled twin ``_features_c`` where
that was built from the current sources, else from the source itself (see ``pipeline/_accel.py``).
"""

from pipeline import _accel

try:
    _accel.require_current_build()
    from pipeline.features._features_c import *  # type: ignore[import-not-found]  # noqa: F403
except ImportError:
    from pipeline.features._features import *  # noqa: F403
