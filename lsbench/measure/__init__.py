"""Measurement: timing, memory, environment fingerprint, FLOP counts and machine peak."""
