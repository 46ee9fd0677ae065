"""Revocations: which tokens and subjects are no longer good, kept, published and followed.

* :mod:`~pipeline.revocations.store` — :class:`RevocationIndex`, the in-memory lookup every validation consults,
  and :class:`RevocationStore`, which persists it in SQLite with monotonic versions;
* :mod:`~pipeline.revocations.feed` — the feed's signed Security Event Tokens: :class:`FeedSigner` (the
  responder, the admin API) and :class:`FeedVerifier` (whoever reads the feed);
* :mod:`~pipeline.revocations.follower` — :class:`RevocationFollower`, which applies the feed on the bus to a store;
* :mod:`~pipeline.revocations.store_sync` — :class:`RevocationStoreSync`, which applies what other processes
  (``--workers``) wrote to the shared store.

Shared by the validation tier, the responder and the alerts service; it depends on none of them.
"""

from pipeline.revocations.feed import FeedSigner, FeedVerifier
from pipeline.revocations.follower import RevocationFollower
from pipeline.revocations.store import RevocationIndex, RevocationStore, new_revocation
from pipeline.revocations.store_sync import RevocationStoreSync

__all__ = [
    "FeedSigner",
    "FeedVerifier",
    "RevocationFollower",
    "RevocationIndex",
    "RevocationStore",
    "RevocationStoreSync",
    "new_revocation",
]
