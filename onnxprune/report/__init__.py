"""Stage 7b: the report, its summary and plot."""
