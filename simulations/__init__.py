"""Simulation scenarios (TOML) and the harness that runs them on Flower's simulation engine."""
