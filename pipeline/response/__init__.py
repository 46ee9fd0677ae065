"""Turning anomalous windows into alerts (and, under a guarded policy, revocations)."""
