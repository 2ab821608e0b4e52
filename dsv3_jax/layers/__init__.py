"""Model layers: thin Flax holders of parameters around pure functions (DESIGN.md principle 1)."""
