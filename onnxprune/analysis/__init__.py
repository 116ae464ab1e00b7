"""Stage 2: the graph view and the channel groups found by the per-op rules."""
