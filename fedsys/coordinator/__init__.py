"""Server side logic: the round loop, sampling, aggregation rounds, checkpoints."""
