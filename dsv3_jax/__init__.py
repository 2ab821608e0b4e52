"""dsv3_jax: DeepSeek-V3 in JAX/Flax for research (README.md; docs/architecture.md, docs/numerics.md, docs/paper.md)."""

from dsv3_jax.config import ModelConfig
from dsv3_jax.model import DeepSeekV3, ModelOutput
from dsv3_jax.interop import from_pretrained, load_hf_checkpoint, save_hf_checkpoint

__all__ = ["ModelConfig", "DeepSeekV3", "ModelOutput", "from_pretrained", "load_hf_checkpoint", "save_hf_checkpoint"]
__version__ = "0.1.0"
