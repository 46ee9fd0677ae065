"""The validation tier: a hardened access-token validator, its keys, revocations and HTTP surfaces."""

from pipeline.errors import JwksError
from pipeline.keys.key_set import KeySet, parse_jwks
from pipeline.validation.config import ValidatorConfig
from pipeline.validation.validator import TokenValidator
from pipeline.validation.verifier import Verdict

__all__ = ["JwksError", "KeySet", "TokenValidator", "ValidatorConfig", "Verdict", "parse_jwks"]
