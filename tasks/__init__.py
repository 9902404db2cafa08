"""Inspect tasks of esr-eval (registry names esr_eval/<task>)."""
