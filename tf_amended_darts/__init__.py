"""tf-amended-darts: Amended-DARTS architecture search in Keras 3 / TensorFlow 2."""

__version__ = "0.1.0"
