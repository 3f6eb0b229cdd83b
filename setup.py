"""Packaging for tf-amended-darts.

Pinned: the versions the tests were run with.

TensorFlow comes from an extra, never from the base requirements: the CPU
wheel (``tensorflow-cpu``) and the CUDA wheel (``tensorflow``) install the
same ``tensorflow`` module, and an extra cannot remove a base requirement,
so a base pin on either would put both wheels into a GPU install. Choose
one:

    pip install -e ".[cpu]"    # CPU build (CI, laptops); `tensorflow` on
                               # non-x86_64 machines, which have no -cpu wheel
    pip install -e ".[gpu]"    # CUDA build: tensorflow[and-cuda], with the
                               # NVIDIA libraries from PyPI

`tf_amended_darts/install_check.py` stops an import without TensorFlow with
these commands, and warns when both wheels are installed.
"""

from setuptools import find_packages, setup

TENSORFLOW_VERSION = "2.21.0"

setup(
    name="tf-amended-darts",
    version="0.1.0",
    description=(
        "Amended-DARTS: differentiable architecture search with an amended "
        "second-order architecture gradient, in Keras 3 / TensorFlow 2."
    ),
    packages=find_packages(include=["tf_amended_darts", "tf_amended_darts.*"]),
    package_data={"tf_amended_darts.vision": ["published_genotypes.json"]},
    python_requires=">=3.10",
    install_requires=[
        "keras==3.15.1",
        "tensorboard==2.21.0",
        "tensorflow-datasets==4.9.10",
        "importlib-resources==7.1.0",  # TFDS downloads need it (design.md)
        "keras-tuner==1.4.8",
        "absl-py==2.5.1",
        "numpy>=1.26,<2.6",
        "matplotlib==3.11.2",
        "scikit-learn==1.9.1",  # ships the embedded offline digits dataset
    ],
    extras_require={
        "cpu": [
            f"tensorflow-cpu=={TENSORFLOW_VERSION}; "
            "platform_machine=='x86_64'",
            f"tensorflow=={TENSORFLOW_VERSION}; platform_machine!='x86_64'",
        ],
        "gpu": [f"tensorflow[and-cuda]=={TENSORFLOW_VERSION}"],
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0"],
    },
)
