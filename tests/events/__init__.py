"""Tests of pipeline/events: the records on the bus, their strict parsing, their time form and Arrow schemas."""
