"""Tests of pipeline/serving: the HTTP server's guards, TLS, the client address, what every service's HTTP shares."""
