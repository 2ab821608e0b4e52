"""Blockwise-scaled FP8 GEMM (DeepSeek kernel.py / DeepGEMM semantics): reference, Mosaic GPU, Triton, api."""

from pallas_kernels.fp8_gemm.api import fp8_gemm, sharded_fp8_gemm
from pallas_kernels.fp8_gemm.reference import fp8_gemm_reference

__all__ = ["fp8_gemm", "fp8_gemm_reference", "sharded_fp8_gemm"]
