"""Research ablations: each a small config diff on a base config, run by experiments/runner.py."""
