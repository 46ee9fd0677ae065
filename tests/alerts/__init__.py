"""Tests of pipeline/alerts: the alerts service, webhook delivery and its HTTP API."""
