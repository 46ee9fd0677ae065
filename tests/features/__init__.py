"""Tests of pipeline/features: feature vectors and baselines."""
