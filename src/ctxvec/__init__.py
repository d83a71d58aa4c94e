"""ctxvec: contextual encoders, context-vector embeddings, FAISS indexes and MLflow versions."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# Idle OpenMP threads (torch's, FAISS's) sleep instead of spinning for work. Spinning threads
# take the CPU from the threads that do the work whenever other processes compete for it: MiniLM
# at 2 threads on a busy 2-CPU machine encoded 1.7x faster passive than spinning, and passed
# ONNX Runtime instead of trailing it (docs/benchmarks.md, Threads under contention). It must be
# set before torch loads OpenMP; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("ctxvec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
