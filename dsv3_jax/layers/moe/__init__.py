"""DeepSeekMoE: router (gating + group-limited top-k), dispatch (sort + grouped GEMM), the MoE layer."""
