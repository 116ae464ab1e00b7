"""Stage 5: which channels to keep: ratios, budgets, knapsack solvers."""
