"""Inspect entry point: importing this registers the provider, tasks and scorers."""

# ruff: noqa: F401
from esr_eval.provider import SteeredModelAPI
