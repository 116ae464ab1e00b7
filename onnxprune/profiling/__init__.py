"""Stage 4: latency measured on the runtime, latency tables and models, analytic costs."""
