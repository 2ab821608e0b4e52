"""dsv3_jax: DeepSeek-V3 in JAX/Flax for research (README.md; spec in DESIGN.md / REFERENCE.md)."""

from dsv3_jax.config import ModelConfig
from dsv3_jax.model import DeepSeekV3, ModelOutput

__all__ = ["ModelConfig", "DeepSeekV3", "ModelOutput"]
__version__ = "0.1.0"
