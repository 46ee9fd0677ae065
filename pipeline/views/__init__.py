"""The keyed views of the usage topic: the same events keyed by subject and by client IP (issue 17, first slice).

* :mod:`~pipeline.views.keys` — an event's key in each view: the detection engine's entity keys, defined once
  (pure);
* :mod:`~pipeline.views.rekey` — the re-keying stage that reads ``jwtwatch.token-usage`` and publishes each event,
  its bytes unchanged, to ``jwtwatch.token-usage.by-subject`` and ``jwtwatch.token-usage.by-ip``.

The token view is the usage topic itself (keyed by ``jti``). ``jwtwatch pipeline rekey`` runs the stage.
"""

from pipeline.views.keys import VERIFIED_REASONS, ip_key, subject_key
from pipeline.views.rekey import Rekeyer, RekeyStage, decode_usage

__all__ = ["VERIFIED_REASONS", "RekeyStage", "Rekeyer", "decode_usage", "ip_key", "subject_key"]
