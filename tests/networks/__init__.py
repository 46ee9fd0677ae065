"""Tests of pipeline/networks: network identity and --ip-db files."""
