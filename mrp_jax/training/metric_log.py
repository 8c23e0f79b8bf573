"""Training metrics to a JSON-lines file and TensorBoard event files (the console shows the
training's progress bar instead: train.py).

Only process 0 writes. Keys are namespaced ('loss/response', 'norm/grads', 'val/auroc/pre',
'perf/examples_per_s'); a resumed run appends, so a step can appear twice in metrics.jsonl
(the later line is the resumed run's).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import jax
import tensorboardX


class MetricLog:

  def __init__(self, workdir: str | Path):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      workdir = Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
      self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    for key, value in scalars.items():
      if math.isfinite(value):
        self._tensorboard.add_scalar(key, value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()
