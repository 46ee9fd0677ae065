"""Tests of pipeline/windows: event-time windows and their state."""
