"""tf-amended-darts: Amended-DARTS architecture search, Keras 3 / TF 2."""

__version__ = "0.1.0"
