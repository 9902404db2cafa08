"""Capability under steering: lm-eval's HFLM with the project's steering hook."""
