"""A micro-batch of usage events in columns — what the engine consumes, from the bus or from files.

The code is in ``pipeline/detection/_batch.py``. This module exports it from its compiled twin ``_batch_c`` where
that was built from the current sources, else from the source itself (see ``pipeline/_accel.py``).
"""

from pipeline import _accel

try:
    _accel.require_current_build()
    from pipeline.detection._batch_c import *  # type: ignore[import-not-found]  # noqa: F403
except ImportError:
    from pipeline.detection._batch import *  # noqa: F403
