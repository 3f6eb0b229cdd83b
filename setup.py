"""Packaging for tf-amended-darts.

Pinned: the versions the tests were run with.
"""

from setuptools import find_packages, setup

setup(
    name="tf-amended-darts",
    version="0.1.0",
    description=(
        "Amended-DARTS: differentiable architecture search with an amended "
        "second-order architecture gradient, in Keras 3 / TensorFlow 2."
    ),
    packages=find_packages(include=["tf_amended_darts", "tf_amended_darts.*"]),
    package_data={
        "tf_amended_darts.vision": ["published_genotypes.json"],
        "tf_amended_darts.language": ["published_genotypes.json"],
    },
    python_requires=">=3.10",
    install_requires=[
        "tensorflow-cpu==2.21.0; platform_machine=='x86_64'",
        "tensorflow==2.21.0; platform_machine!='x86_64'",
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
    extras_require={"test": ["pytest==9.0.3", "pytest-xdist==3.8.0"]},
)
