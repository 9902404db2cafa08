"""The CI gate over logs, and model comparison as an Inspect eval set."""
