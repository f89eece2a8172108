"""Test setup: the repo root on sys.path and TF_USE_LEGACY_KERAS set (via compat) before TensorFlow."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compat  # noqa: E402,F401
