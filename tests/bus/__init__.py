"""Tests of pipeline/bus: the memory and Kafka buses, the consumer loop, the broker they rely on."""
