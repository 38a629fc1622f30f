"""Server side of fedlora: round planning, strategy, secure aggregation, checkpoints."""
