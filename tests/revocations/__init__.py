"""Tests of pipeline/revocations: the index and its store, the signed feed, following it, syncing workers."""
