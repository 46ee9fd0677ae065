"""Tests of pipeline/scoring: the Isolation Forest, severities, reasons and model persistence."""
