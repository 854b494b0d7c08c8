"""Shared pytest configuration: make the repository root importable (``tests.*``, ``examples.*``,
``autopar``, ``cost_models``) in the test process and in spawned worker processes."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
