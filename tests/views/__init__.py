"""Tests of pipeline/views: the keyed views and the re-keying stage that makes them."""
