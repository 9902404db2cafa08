"""Trial records read from logs, and the one implementation of rates, intervals and summaries."""
