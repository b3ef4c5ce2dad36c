"""Usage and cost buckets, prices and budgets arrive with the usage issue."""
