"""Packaging for keras-vision-transformer (import name: keras_vit)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "keras_vit" / "version.py").read_text()
).group(1)

# TensorFlow comes through an extra: `tensorflow-cpu` does not satisfy a
# requirement on `tensorflow`, so a plain dependency would download the full
# (GPU) package beside a CPU install.
TENSORFLOW = "2.16"
EXTRAS = {
    "cpu": [f"tensorflow-cpu>={TENSORFLOW}"],
    "gpu": [f"tensorflow[and-cuda]>={TENSORFLOW}"],
    # Keras' JAX backend (KERAS_BACKEND=jax); CPU wheels, see the README for GPUs.
    "jax": ["jax[cpu]>=0.4.30"],
    "examples": ["scikit-image>=0.21", "pillow>=9", "matplotlib>=3.7"],
    # keras-vit serve, the TF-Serving-compatible development server.
    "serve": ["aiohttp>=3.9"],
    # Reference implementations for the parity tests. torch is pinned: an
    # unpinned torch pulls a multi-GB CUDA build; 2.14.1 with torchvision
    # 0.29.1 is the pair timm imports with.
    "test": [
        "pytest>=7",
        "pytest-xdist>=3.8",  # --no-loadscope-reorder (pyproject.toml)
        "aiohttp>=3.9",
        "hypothesis>=6",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm>=1.0.20",
        # tests/test_backends.py: the core on Keras' JAX backend.
        "jax[cpu]>=0.4.30",
        "transformers>=4.45",
        "scikit-image>=0.21",
        "pillow>=9",
        "matplotlib>=3.7",  # keras-vit train writes curves.png by default
    ],
}

setup(
    name="keras-vision-transformer",
    version=VERSION,
    description=(
        "Vision Transformers (ViT) for Keras 3 and TensorFlow: every standard "
        "size, original checkpoints, parity with timm."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["keras_vit", "keras_vit.*"]),
    # ImageNet-1k and ImageNet-21k class names (keras_vit.imagenet).
    package_data={"keras_vit": ["_data/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        # 3.13.2: the published safe-mode bypasses (CVE-2025-1550 and later) fixed;
        # .weights.h5 files record layer names from 3.6 (keras_vit.weights.layout).
        "keras>=3.13.2",
        "numpy>=1.24",
        "h5py>=3.8",
        "safetensors>=0.4",
        "scikit-learn>=1.2",
        "matplotlib>=3.7",  # keras-vit train writes curves.png by default
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",
        # tensorflow-datasets imports it when it prepares or reads a data set
        # but does not declare it.
        "importlib_resources",
        # Named-weight downloads and keras_vit.serving.Client.
        "requests>=2.31",
        "pillow>=9",
        # Named weights: one download per cache file across processes
        # (the lock library huggingface_hub uses), and hf:// handles.
        "filelock>=3.12",
        "huggingface_hub>=0.23",
    ],
    entry_points={"console_scripts": ["keras-vit=keras_vit.cli:main"]},
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
