"""``jwtwatch demo``: the whole loop in one process, fed with simulated traffic through the real validator.

* :mod:`~pipeline.demo.run` — orchestration and the live view (:func:`run_demo`, :class:`DemoOptions`), around
  ``jwtwatch serve``'s node (:class:`~pipeline.nodes.AllInOne`) on the demo's clock (:mod:`~pipeline.demo.clock`);
* :mod:`~pipeline.demo.traffic` and :mod:`~pipeline.demo.tokens` — simulated events as HTTP requests
  carrying real signed (or really forged) tokens;
* :mod:`~pipeline.demo.receiver` — a webhook receiver that verifies Standard Webhooks signatures;
* :mod:`~pipeline.demo.report` — the summary, the plots and ``index.html``;
* :mod:`~pipeline.demo.validator_walkthrough` — ``jwtwatch validator demo``: the validator alone, a short
  walkthrough (:func:`~pipeline.demo.validator_walkthrough.run_validator_demo`).
"""

from pipeline.demo.run import DemoOptions, DemoRun, run_demo
from pipeline.errors import DemoError

__all__ = ["DemoError", "DemoOptions", "DemoRun", "run_demo"]
