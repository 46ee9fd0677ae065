"""Tests of pipeline/simulate: the traffic simulator and its family of worlds."""
