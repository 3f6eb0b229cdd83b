"""Amended-DARTS in Keras 3 / TensorFlow 2.

Subpackages: `nn` (layers with exact higher derivatives), `core` (the
bi-level engine), `vision` (the CNN task), `language` (the recurrent task),
`jobs` (what the launchers call).
"""

__version__ = "0.1.0"

from tf_amended_darts import install_check  # noqa: E402

install_check.check()
