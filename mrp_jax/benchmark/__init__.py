"""The benchmark job: compiled step times, FLOPs, MFU, memory plans, the PyTorch twin.

The job and its config checks are in job.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# What the job can measure (config.benchmark.parts). 'plan' and 'hlo' compile from shapes and
# run nothing, so they also work for a GPU that is not here (config.benchmark.target).
PARTS = ("eval", "train", "augment", "pipeline", "torch", "plan", "hlo")
COMPILE_ONLY_PARTS = frozenset({"plan", "hlo"})


def run(config: Any, workdir: str | Path) -> dict[str, Any]:
  """Runs the benchmark job (mrp_jax/benchmark/job.py)."""
  from mrp_jax.benchmark import job
  return job.run(config, workdir)
