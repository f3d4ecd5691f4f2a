"""Shared fixtures. Heavy things (a demo dataset, a trained model) are session-scoped and built once."""

import os

# Keep MindSpore/oneDNN from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
