"""Scripts that measure or check on real hardware; not part of the dsv3_jax package."""
