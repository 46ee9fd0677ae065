"""One regression test per finding of the outside security review of commit 1c06c30 (issue 14).

In the manner of PyJWT's ``test_advisory.py``: each test is named after its finding, reproduces the attack as
the reviewer ran it (real signed JWTs, real servers on loopback, real files) and fails on 1c06c30. The deeper
tests of each mechanism live beside the code's other tests; ``docs/security.md`` lists both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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


# ---------------------------------------------------------------------------------------------------------------
# LOW 12: rotating the feed key lost live revocations for validators that started later
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# LOW 13: hardening (file modes, admin-token file mode, WAL secrets, PKCS#11 module path, header timeout,
# duplicate Authorization headers)
# ---------------------------------------------------------------------------------------------------------------


def test_low_13_pkcs11_module_reached_through_a_symlink_into_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """The module check looked only at the final file's mode (through the symlink): a link to a module in a directory
    anyone can write passed, and loading a module runs its code. Every directory on the resolved path now counts."""
    import os
    import shutil

    from pipeline.validation.keystore import KeyStore, KeyStoreError
    from tests.require import skip_or_fail

    softhsm = "/usr/lib/softhsm/libsofthsm2.so"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        skip_or_fail("SOFTHSM", "python-pkcs11 is not installed")
    if not os.path.exists(softhsm):
        skip_or_fail("SOFTHSM", f"{softhsm} missing (apt-get install softhsm2)")
    shared = tmp_path / "shared"  # any local user can swap the file in here
    shared.mkdir()
    module = shared / "libsofthsm2.so"
    shutil.copy(os.path.realpath(softhsm), module)
    module.chmod(0o755)  # the file itself looks fine
    shared.chmod(0o777)
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(module)
    with pytest.raises(KeyStoreError, match=r"directory .*shared is writable by other users \(mode 777\)"):
        KeyStore.init(tmp_path / "k", backend="pkcs11", module=str(link), token_label="jwtwatch", pin="246810")
    assert not (tmp_path / "k").exists()


# ---------------------------------------------------------------------------------------------------------------
# Also: SSRF classifier (IPv4-compatible IPv6, 64:ff9b:1::/48)
# ---------------------------------------------------------------------------------------------------------------
