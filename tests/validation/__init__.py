"""Tests of pipeline/validation: the verifier, keys, JWKS, the HTTP service and middleware, enforcement."""
