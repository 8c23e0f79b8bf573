"""The train job end to end from records: every model, resume equality, errors, devices, hosts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_train_config
from numerics import assert_close_at_scale

from configs import rhpc
from mrp_jax.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def records(training_records):
  return training_records


_config = tiny_train_config


@pytest.mark.parametrize("label", ["rhpc", "iMGrhpc", "iMRrhpc"])
def test_each_model_trains_from_records(trained_runs, label):
  workdir = trained_runs[label]  # 6 steps; log every 2, validate and checkpoint every 3
  summary = json.loads((workdir / "final.json").read_text())
  assert summary["model"] == label and summary["steps"] == 6 and summary["best_step"] in (3, 6)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert len(losses) == 3 and all(np.isfinite(losses))
  assert all(l["perf/examples_per_s"] > 0 for l in lines if "loss" in l)
  validation = [l for l in lines if "val/auroc" in l]
  assert [l["step"] for l in validation] == [3, 6]
  assert validation[0]["val/n/pre"] > 0
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      "3", "6"]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 6
  assert "mri" in json.loads((workdir / "preprocessing.json").read_text())


def test_non_finite_loss_stops_training_naming_step_and_term(records, tmp_path):
  config = _config(rhpc, records)
  config.loss.response_weight = float("inf")
  with pytest.raises(train.NonFiniteLossError, match=r"step [12]: loss(/response)? = "):
    train.train_and_evaluate(config, tmp_path)


def test_a_geometry_other_than_the_records_stops_training_in_one_line(records, tmp_path):
  """The records' manifest is the one source of the geometry: a config naming another preset
  stops before anything is trained, in one line naming the field and both values."""
  config = _config(rhpc, records)
  config.data.geometry = "demo"
  with pytest.raises(train.GeometryMismatch, match=(
      r"config.data.geometry='demo' means mri.spacing_mm \(4.0, 4.0, 4.0\), the records were "
      r"prepared with \(8.0, 8.0, 8.0\)")):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
  result = _main(["--config", "configs/rhpc.py:tiny", f"--config.data.records={records}",
                  "--config.data.geometry=demo", "--workdir", str(tmp_path / "cli")],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _, stderr = result.communicate(timeout=300)
  assert result.returncode == 1
  assert stderr.strip().splitlines()[-1] == (
      f"mrp_jax: {records / 'manifest.json'}: config.data.geometry='demo' means mri.spacing_mm "
      "(4.0, 4.0, 4.0), the records were prepared with (8.0, 8.0, 8.0); prepare records with "
      "that geometry, or set --config.data.geometry='' to train at the records' own")
  assert "Traceback" not in stderr


def _main(args, env=None, **kwargs):
  return subprocess.Popen(
      [sys.executable, "-m", "mrp_jax.main", *args], cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **(env or {})},
      **kwargs)


def test_four_devices_and_fsdp_give_the_one_device_step():
  """Same global batch on 1 device, 4 devices and 4 devices with FSDP: same loss terms, same
  new parameters (cross-replica BatchNorm and per-example augmentation keys make it so)."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0"}
  result = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_step.py")], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout.strip().splitlines()[-1])
  one = runs["one"]
  assert (one["devices"], runs["four"]["devices"]) == (1, 4)
  assert runs["fsdp"]["sharded_leaves"] > 0 and runs["four"]["sharded_leaves"] == 0
  assert one["metrics"]["norm/updates"] > 0 and one["metrics"]["loss/aux/laterality"] > 0
  # Up to rounding: the devices sum gradients and BatchNorm statistics in another order. Each
  # term holds to 1e-4 of itself, or of the total loss it is summed into where it cancels to
  # near 0 (~800 float32 ulps: reductions over a few thousand elements, probabilistic rounding
  # sqrt(N) u). Parameters: Adam's first update is lr g / (|g| + eps), insensitive to rounding
  # of g, so the checksum moves by a few ulps per parameter (EPS32 x checksum ~ 1e-7 relative).
  for name in ("four", "fsdp"):
    for key, value in one["metrics"].items():
      assert runs[name]["metrics"][key] == pytest.approx(
          value, rel=1e-4, abs=1e-4 * one["metrics"]["loss"]), (name, key)
    assert runs[name]["param_checksum"] == pytest.approx(one["param_checksum"], rel=1e-5)


def test_two_processes_joined_by_jax_distributed(records, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable,
         "MRP_LOG_PREFIX": str(tmp_path / "process")}
  result = subprocess.run(
      ["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "--config",
       "configs/rhpc.py:tiny", "--workdir", str(tmp_path / "run"),
       f"--config.data.records={records}", "--config.train.num_steps=6",
       "--config.train.eval_every_steps=3", "--config.train.checkpoint_every_steps=3",
       "--config.train.log_every_steps=3"],
      env=env, capture_output=True, text=True, cwd=ROOT, timeout=400)
  logs = [(tmp_path / f"process-{i}.log").read_text() for i in range(2)]
  assert result.returncode == 0, "\n".join(log[-2000:] for log in logs)
  assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
  # Each process its own library log (process 1's from the moment it knows its index).
  library = [(tmp_path / "run" / "logs" / name).read_text() for name in ("train.log",
                                                                           "train.1.log")]
  assert "process 0 of 2" in library[0] and "process 1 of 2" not in library[0]
  assert "process 1 of 2" in library[1]
  summary = json.loads((tmp_path / "run" / "final.json").read_text())
  assert summary["steps"] == 6
  assert (tmp_path / "run" / "checkpoints" / "6").exists()


def test_a_fused_model_starts_as_the_trained_rhpc_model(trained_runs, training_records):
  """rhpc_init with the rhpc skip connection: the fused model's initial logits are the rhpc
  run's, whatever the images (the response head's last layer starts at zero); without the
  warm start they are not."""
  from configs import iMGrhpc
  from input_pipeline import records
  from input_pipeline.feed import batching, pipeline
  from input_pipeline.records import tfrecord
  from mrp_jax.core import inference, runs, sharding
  from mrp_jax.core import state as state_lib

  mesh = sharding.make_mesh(jax.devices()[:1])
  source = runs.load_run(trained_runs["rhpc"], mesh)
  config = tiny_train_config(iMGrhpc, training_records)
  recipe = state_lib.build_state(config, mesh, pipeline.batch_spec(training_records))
  fresh = recipe.create(config.seed)
  warm = fresh.replace(params=train.rhpc_parts_from(trained_runs["rhpc"],
                                                    jax.device_get(fresh.params)))
  spec = pipeline.batch_spec(training_records)
  patients = [records.decode(data) for path in pipeline.split_paths(training_records, "train")
              for _, data in tfrecord.iter_records(path)]
  examples = [batching.eval_example(r, "pre") for r in patients[:4]]
  batch = batching.collate(examples, "iMGrhpc", spec)
  noise = np.random.default_rng(0).integers(0, 65535, batch["mg"].shape).astype(batch["mg"].dtype)
  expected = source.eval_step(source.state.params, source.state.batch_stats,
                              batching.collate(examples, "rhpc", spec))["logit"]
  step = inference.jit_eval_step(recipe.model)
  for images in (batch["mg"], noise):
    logit = step(warm.params, warm.batch_stats, {**batch, "mg": images})["logit"]
    # The same MLP in another program (the fused graph may sum in another order): a few ulps
    # per layer of the logits' scale; the image term adds exactly 0.
    assert_close_at_scale(logit, expected, ulps=64)
  assert np.abs(np.asarray(step(fresh.params, fresh.batch_stats, batch)["logit"])
                - np.asarray(expected)).max() > 1e-3
