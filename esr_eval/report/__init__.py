"""The comparison report: runs read from logs, tables, plots, the paper's published figures."""
