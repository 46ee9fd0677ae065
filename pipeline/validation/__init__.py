"""The validation tier: a hardened access-token validator and its surfaces (forward-auth app, middleware).

Its keys come from :mod:`pipeline.keys`, revocations from :mod:`pipeline.revocations`, HTTP serving from
:mod:`pipeline.serving`."""

from pipeline.errors import JwksError
from pipeline.keys.key_set import KeySet, parse_jwks
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.validator import TokenValidator
from pipeline.validation.verifier import Verdict

__all__ = ["JwksError", "KeySet", "TokenValidator", "ValidatorConfig", "Verdict", "parse_jwks"]
