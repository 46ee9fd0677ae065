"""The processes jwtwatch runs, each wired once from its parts: the CLI parses options and hands them to one.

* :class:`ValidatorNode` (``validator serve``) — the validator, one process or ``--workers`` forked ones;
* :class:`PipelineNode` (``pipeline run``) — runner, responder and archive on a bus;
* :class:`RekeyNode` (``pipeline rekey``) — the usage topic re-keyed into its views by subject and by IP;
* :class:`AlertsNode` (``alerts serve``) — the alerts service fed by a bus;
* :class:`AllInOne` (``serve``, and ``demo`` on its simulated clock) — all three on one in-process bus and port.

Each takes what it depends on (a bus, a model, settings, a clock) when it is built; :mod:`~pipeline.nodes.resources`
opens what the CLI hands them, and a start that cannot go on raises :class:`NodeError`.
"""

from pipeline.errors import NodeError
from pipeline.nodes.alerts_node import AlertsNode
from pipeline.nodes.allinone import AllInOne, ServeOptions
from pipeline.nodes.key_trust import KeyTrust
from pipeline.nodes.pipeline_node import PipelineNode, PipelineSettings
from pipeline.nodes.rekey_node import RekeyNode
from pipeline.nodes.resources import FeedKeys, open_bus, open_feed_keys
from pipeline.nodes.running import Listener
from pipeline.nodes.validator_node import TokenRules, ValidatorNode, ValidatorSettings

__all__ = [
    "AlertsNode",
    "AllInOne",
    "FeedKeys",
    "KeyTrust",
    "Listener",
    "NodeError",
    "PipelineNode",
    "PipelineSettings",
    "RekeyNode",
    "ServeOptions",
    "TokenRules",
    "ValidatorNode",
    "ValidatorSettings",
    "open_bus",
    "open_feed_keys",
]
