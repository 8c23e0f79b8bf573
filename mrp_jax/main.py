"""Entry point: ``python -m mrp_jax.main --config configs/<name>.py --workdir DIR``.

Parses the config (locked: a misspelt field is an error), checks it with the checks of the
modules its job runs (:data:`JOBS`; importing nothing else), starts the job's console
(mrp_jax/console.py: library logging to WORKDIR/logs/<job>.log unless ``-v``/``--verbosity``
is given), sets up JAX's multi-process runtime when the environment describes one, runs the job
and prints its summary: what was written where and how to look at it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from input_pipeline.geometries import GeometryMismatch
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


def _train_checks() -> Sequence[configuration.Check]:
  from mrp_jax.training import checks
  return checks.CONFIG_CHECKS


def _evaluate(config, workdir: Path) -> list[str]:
  from mrp_jax.evaluation import evaluate, outputs
  evaluate.run(config, workdir)
  return outputs.summary(workdir / "report")


def _evaluate_checks() -> Sequence[configuration.Check]:
  from mrp_jax.evaluation import evaluate
  return evaluate.CONFIG_CHECKS


def _benchmark(config, workdir: Path) -> list[str]:
  from mrp_jax import benchmark
  benchmark.run(config, workdir)
  return [f"measurements: {workdir / 'benchmark.json'}"]


def _benchmark_checks() -> Sequence[configuration.Check]:
  from mrp_jax.benchmark import job
  return job.CONFIG_CHECKS


def _pretrain(config, workdir: Path) -> list[str]:
  from mrp_jax.training import pretrain
  pretrain.pretrain(config, workdir)
  return [(f"pretrained encoder: {workdir / pretrain.ENCODER_DIR} (a fused model starts from "
           f"it with --config.model.encoder_init={workdir})"),
          f"loss of every logged step: {workdir / 'metrics.jsonl'}"]


def _pretrain_checks() -> Sequence[configuration.Check]:
  from mrp_jax.training import pretrain
  return pretrain.CONFIG_CHECKS


def _demo(config, workdir: Path) -> list[str]:
  from mrp_jax import demo
  return demo.run(config, workdir)


def _demo_checks() -> Sequence[configuration.Check]:
  from mrp_jax import demo
  return demo.CONFIG_CHECKS


@dataclasses.dataclass(frozen=True)
class Job:
  """One value of config.job. Both functions import the job's modules when called, so a job
  loads only what it runs.

  Attributes:
    run: runs the job; returns the lines of its closing summary.
    checks: the config checks of what the job runs (configuration.py), each job module's
      ``CONFIG_CHECKS``.
  """
  run: Callable[[ml_collections.ConfigDict, Path], list[str]]
  checks: Callable[[], Sequence[configuration.Check]]


JOBS: dict[str, Job] = {
    "train": Job(_train, _train_checks),
    "evaluate": Job(_evaluate, _evaluate_checks),
    "benchmark": Job(_benchmark, _benchmark_checks),
    "demo": Job(_demo, _demo_checks),
    "describe": Job(_describe, _train_checks),  # what a train config builds
    "pretrain": Job(_pretrain, _pretrain_checks),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config`` as its job (config.job) reads it.

  Raises:
    configuration.ConfigError: naming every invalid field, or an unknown job.
  """
  if config.job not in JOBS:
    raise configuration.ConfigError(
        f"config.job={config.job!r} is not a job; jobs: {', '.join(JOBS)}")
  configuration.validate(config, JOBS[config.job].checks())


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with variants: configs/iMRrhpc.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  try:
    validate(config)
  except configuration.ConfigError as error:
    sys.exit(f"mrp_jax: {error}")
  if config.job in ("train", "pretrain") and not config.data.records:
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
    summary = JOBS[config.job].run(config, workdir)
  except GeometryMismatch as error:  # a config or run against the records: one line says where
    job_console.warn(f"stopped after {job_console.elapsed():.0f} s")
    sys.exit(f"mrp_jax: {error}")
  except BaseException as error:
    if _is_checkpoint_error(error):  # its one line says what is wrong with each step
      sys.exit(f"{config.job}: {error}")
    job_console.warn(f"stopped after {job_console.elapsed():.0f} s by the error below; the "
                     f"library log: {job_console.log_path}")
    raise
  job_console.summary(summary)


def _is_checkpoint_error(error: BaseException) -> bool:
  # Without importing the checkpoint module (and Orbax) into jobs that read no checkpoint: a job
  # that raised its error has loaded it.
  module = sys.modules.get("mrp_jax.core.checkpoint")
  return module is not None and isinstance(error, module.CheckpointError)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config in ``argv`` (as absl reads it: '--config X' or '--config=X')."""
  for k, arg in enumerate(argv):
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      return value if equals else (argv[k + 1] if k + 1 < len(argv) else None)
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a missing config file and config overrides' errors each turned
  into one readable line."""
  spec = _config_argument(argv[1:])
  if spec and not Path(spec.partition(":")[0]).is_file():
    # config_flags would defer this error to the first use of the config, as a traceback.
    sys.exit(f"mrp_jax: --config: {configuration.missing_file(spec.partition(':')[0])}")
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
