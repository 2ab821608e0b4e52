"""dsv3_jax: DeepSeek-V3 in JAX/Flax for research (see README.md and docs in ../shared/docs)."""

from dsv3_jax.config import ModelConfig

__all__ = ["ModelConfig"]
__version__ = "0.1.0"
