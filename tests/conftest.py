"""Test-wide settings: CPU only, float32 matmuls exact enough for cross-checks."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# LLVM optimisation of XLA:CPU code costs far more than it saves at test sizes: init of a tiny
# 3D ResNet compiles in 6 s instead of 27 s, train steps run as fast (convolutions are library
# calls). docs/performance.md, "Compile time in tests", has the measurement.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# One persistent compilation cache for the session and the subprocesses it starts (the CLI and
# multi-process tests compile the same programs again): a repeated 10-step iMGrhpc run took
# 20.7 s instead of 39.8 s (docs/performance.md, "Compile time in tests").
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"mrp_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import fcntl  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402


def _run_temp(tmp_path_factory) -> pathlib.Path:
  """This pytest run's temporary folder, shared by its xdist workers (each has a subfolder)."""
  base = pathlib.Path(tmp_path_factory.getbasetemp())
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def training_records(tmp_path_factory):
  """A prepared tiny synthetic cohort (20 patients, 16 usable; train/validation 60/40) with its
  oracle (the generator's truth keyed by pseudonym), built once per test session even under
  pytest-xdist (the workers share it through a file lock)."""
  from input_pipeline import synthetic
  from input_pipeline.geometries import GEOMETRIES
  from input_pipeline.ingestion.mammogram import MammogramOptions
  from input_pipeline.ingestion.mri import MriOptions
  from input_pipeline.records import prepare, pseudonyms
  from input_pipeline.synthetic import oracle

  root = _run_temp(tmp_path_factory) / "training_cohort"
  root.mkdir(parents=True, exist_ok=True)
  tiny = GEOMETRIES["tiny"]
  with open(root / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (root / "records" / "manifest.json").exists():
      synthetic.generate_export(root / "export", 20, seed=7, geometry="tiny")
      prepare.prepare(prepare.PrepareOptions(
          source=root / "export", out=root / "records",
          mri=MriOptions(spacing_mm=tiny.mri_spacing_mm, box=tiny.mri_box),
          mammogram=MammogramOptions(size=tiny.mg_size), shard_size=4,
          split_fractions=(0.6, 0.4, 0.0)), progress=False)
      key = prepare.load_key(root / "records.pseudonym.key")
      oracle.write_for_records(root / "export", root / "records",
                               lambda source: pseudonyms.pseudonym(key, source))
  return root / "records"


def tiny_train_config(module, records, **train):
  """configs/<model>.py:tiny on ``records``: 6 steps, evaluated and checkpointed at 3 and 6."""
  config = module.get_config("tiny")
  config.data.records = str(records)
  config.train.num_steps = 6
  config.train.log_every_steps = 2
  config.train.eval_every_steps = 3
  config.train.checkpoint_every_steps = 3
  for key, value in train.items():
    config.train[key] = value
  return config


@pytest.fixture(scope="session")
def trained_runs(training_records):
  """rhpc, iMGrhpc and iMRrhpc trained 6 steps on training_records (tiny configs): label ->
  workdir, built once per session (file lock shared by pytest-xdist workers)."""
  from configs import iMGrhpc, iMRrhpc, rhpc
  from mrp_jax.training import train

  root = training_records.parent / "runs"
  root.mkdir(exist_ok=True)
  workdirs = {"rhpc": root / "rhpc", "iMGrhpc": root / "iMGrhpc", "iMRrhpc": root / "iMRrhpc"}
  with open(root / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for (label, workdir), module in zip(workdirs.items(), (rhpc, iMGrhpc, iMRrhpc)):
      if (workdir / "final.json").exists():
        continue
      train.train_and_evaluate(tiny_train_config(module, training_records), workdir)
  return workdirs
