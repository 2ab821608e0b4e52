"""Model layers: thin Flax holders of parameters around pure functions (docs/architecture.md)."""
