"""`python -m dsv3_jax.train --config=... --workdir=...` (same as `dsv3-train`)."""

from dsv3_jax.cli.train import main

main()
