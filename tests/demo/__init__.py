"""Tests of pipeline/demo: `jwtwatch demo` as a user runs it."""
