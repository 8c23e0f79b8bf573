"""Entry point: ``python -m mrp_jax.main --config configs/<name>.py --workdir DIR``.

Parses the config (locked: a misspelt field is an error), validates it, sets up JAX's
multi-process runtime when the environment describes one, and runs the config's benchmark.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mrp_jax import configuration


def _describe(config, workdir):
  from mrp_jax.models import describe
  return describe.describe(config, workdir)


def _train(config, workdir):
  from mrp_jax.training import train
  return train.train_and_evaluate(config, workdir)


def _evaluate(config, workdir):
  from mrp_jax.evaluation import evaluate
  return evaluate.run(config, workdir)


def _benchmark(config, workdir):
  from mrp_jax import benchmark
  return benchmark.run(config, workdir)


def _demo(config, workdir):
  from mrp_jax import demo
  return demo.run(config, workdir)


# config.job -> what runs it (each imports its modules when it runs).
JOBS: dict[str, Callable[[ml_collections.ConfigDict, str], Any]] = {
    "train": _train, "evaluate": _evaluate, "benchmark": _benchmark, "demo": _demo,
    "describe": _describe}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with variants: configs/iMRrhpc.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.job not in JOBS:
    sys.exit(f"mrp_jax: config.job={config.job!r} is not a job; jobs: {', '.join(JOBS)}")
  try:
    configuration.validate(config)
  except configuration.ConfigError as error:
    sys.exit(f"mrp_jax: {error}")
  if config.job == "train" and not config.data.records:
    sys.exit("mrp_jax: config.data.records is empty: give the folder that "
             "`python -m input_pipeline.prepare` wrote (--config.data.records=DIR)")
  if config.deterministic_gpu:  # read when the GPU backend starts, i.e. after this
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_gpu_deterministic_ops=true"]))
  if config.job == "benchmark" and config.benchmark.target:
    # Compiling for a GPU that is not here: start only the CPU backend (the CUDA plugin, if it
    # were started without a GPU, would fail and leave no way to describe the target).
    jax.config.update("jax_platforms", "cpu")
  if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Cluster environments (SLURM, Cloud TPU, Kubernetes) are detected by JAX itself; plain
    # hosts pass JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch/).
    jax.distributed.initialize(
        num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
  logging.info("job %s, workdir %s, process %d of %d", config.job, _WORKDIR.value,
               jax.process_index(), jax.process_count())

  JOBS[config.job](config, _WORKDIR.value)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with config overrides' errors turned into one readable line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    # ml_collections raises the builtin errors for a '--config.x.y=v' naming no field, and
    # config files for an unknown variant; the messages name the field.
    text = str(error).replace("\\'", "'").replace("\\n", "\n").strip("'\"")
    lines = [line.strip(" '\"") for line in text.splitlines() if line.strip(" '\"")]
    # A config file that raised comes wrapped in its traceback: its last line is the error.
    message = lines[-1] if "Traceback" in text else ". ".join(lines)
    if isinstance(error, (AttributeError, KeyError)):
      message = f"no such field: {message}"
    sys.exit(f"mrp_jax: invalid --config: {message}")


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
