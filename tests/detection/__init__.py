"""Tests of pipeline/detection: the engine, replay, the streaming runner, training and calibration."""
