"""Tests of pipeline/response: alerts, the auto-revocation policy, summaries and verdicts."""
