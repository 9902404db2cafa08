"""Reading ESR logs: comparison report, judge agreement, sequential activations, plots."""
