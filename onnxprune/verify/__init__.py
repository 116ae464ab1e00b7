"""Stage 7a: the mask oracle."""
