"""dlnlab: training dynamics of deep linear networks."""
