"""Helpers shared by the test modules (fixtures are in conftest.py)."""

import os

# The repository root (flagfiles and launchers are run from here).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
