"""Noise models: simulation of realistic noise for demos, tests and benchmarks (estimation comes later)."""
