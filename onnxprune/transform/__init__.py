"""Stage 6: rewrite the graph, compensate removed channels."""
