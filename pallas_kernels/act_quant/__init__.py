"""Fused 1x128 FP8 activation quantization (kernel.py act_quant): reference, Pallas Triton kernel, api."""

from pallas_kernels.act_quant.api import act_quant
from pallas_kernels.act_quant.reference import act_quant_reference

__all__ = ["act_quant", "act_quant_reference"]
