"""Tests of pipeline/validation: the verifier, keys, JWKS, revocations, the HTTP service and middleware."""
