"""The whole of jwtwatch at once: the loop over Kafka, chaos, serve, compose, docs, notebooks, security checks."""
