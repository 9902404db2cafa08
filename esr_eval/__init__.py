"""esr-eval: measure endogenous steering resistance (ESR) with Inspect AI."""

__version__ = "0.1.0"
