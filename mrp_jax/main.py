"""Entry point: ``python -m mrp_jax.main --config configs/<name>.py --workdir DIR``.

Parses the config (locked: a misspelt field is an error), validates it, starts the job's console
(mrp_jax/console.py: library logging to WORKDIR/logs/<job>.log unless ``-v``/``--verbosity``
is given), sets up JAX's multi-process runtime when the environment describes one, runs the job
and prints its summary: what was written where and how to look at it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mrp_jax import configuration, console


def _describe(config, workdir: Path) -> list[str]:
  from mrp_jax.models import describe
  describe.describe(config, workdir)
  return [f"model summary: {workdir / 'describe.json'}"]


def _train(config, workdir: Path) -> list[str]:
  from mrp_jax.training import train
  summary = train.train_and_evaluate(config, workdir)
  return [f"best checkpoint: {workdir / 'best'} ({train.describe_best(summary)})",
          f"checkpoints for resuming: {workdir / 'checkpoints'}",
          f"metrics of every logged step: {workdir / 'metrics.jsonl'}",
          f"curves: tensorboard --logdir {workdir / 'tensorboard'} (pip install tensorboard)"]


def _evaluate(config, workdir: Path) -> list[str]:
  from mrp_jax.evaluation import evaluate
  evaluate.run(config, workdir)
  return evaluate.outputs(workdir / "report")


def _benchmark(config, workdir: Path) -> list[str]:
  from mrp_jax import benchmark
  benchmark.run(config, workdir)
  return [f"measurements: {workdir / 'benchmark.json'}"]


def _demo(config, workdir: Path) -> list[str]:
  from mrp_jax import demo
  return demo.run(config, workdir)


# config.job -> what runs it (each imports its modules when it runs) and returns the lines of
# its closing summary.
JOBS: dict[str, Callable[[ml_collections.ConfigDict, Path], list[str]]] = {
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
             "`python -m input_pipeline.records.prepare` wrote (--config.data.records=DIR)")
  if config.deterministic_gpu:  # read when the GPU backend starts, i.e. after this
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), "--xla_gpu_deterministic_ops=true"]))
  workdir = Path(_WORKDIR.value)
  job_console = console.start(config.job)
  show_logs = flags.FLAGS["verbosity"].present
  job_console.capture_library_logs(workdir, show=show_logs)
  if config.job == "benchmark" and config.benchmark.target:
    # Compiling for a GPU that is not here: start only the CPU backend (the CUDA plugin, if it
    # were started without a GPU, would fail and leave no way to describe the target).
    jax.config.update("jax_platforms", "cpu")
  if config.distributed or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Cluster environments (SLURM, Cloud TPU, Kubernetes) are detected by JAX itself; plain
    # hosts pass JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch/).
    jax.distributed.initialize(
        num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
  if jax.process_index() > 0:  # its own log from here on (its first lines went to process 0's)
    job_console.capture_library_logs(workdir, show=show_logs, process=jax.process_index())
  # The devices JAX found (a GPU machine without a CUDA jaxlib falls back to the CPU, and says so
  # only in the library log).
  job_console.stage(f"JAX {jax.__version__}: {jax.device_count()} {jax.default_backend()} "
                    "device(s)" + (f", process {jax.process_index()} of {jax.process_count()}"
                                   if jax.process_count() > 1 else ""))
  try:
    summary = JOBS[config.job](config, workdir)
  except BaseException:
    job_console.warn(f"stopped after {job_console.elapsed():.0f} s by the error below; the "
                     f"library log: {job_console.log_path}")
    raise
  job_console.summary(summary)


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
