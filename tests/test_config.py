"""Config files load, variants apply, and bad fields stop the run with the field named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import benchmark, common, demo, evaluate, iMGrhpc, iMRrhpc, rhpc
from input_pipeline import schema
from mrp_jax import configuration

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [rhpc, iMGrhpc, iMRrhpc, demo, evaluate, benchmark])
@pytest.mark.parametrize("variants", [None, "tiny", "tiny,medicalnet,paper",
                                      "no_knowledge,no_time"])
def test_every_config_and_variant_validates(module, variants):
  config = module.get_config(variants)
  configuration.validate(config)
  assert set(config.loss.aux_weights) == set(schema.VARIABLE_NAMES)


def test_variants_change_what_they_say():
  config = iMRrhpc.get_config("medicalnet,paper,no_time")
  assert config.model.encoder.layout == "medicalnet" and config.model.encoder.shortcut == "A"
  assert config.train.optimizer == "paper" and config.train.learning_rate == 1e-4
  assert config.train.b1 == 0.5 and config.train.grad_clip_norm == 0.25
  assert config.model.time_embedding is False and config.model.knowledge_predictor is True
  with pytest.raises(ValueError, match="unknown config variant 'bogus'"):
    iMRrhpc.get_config("tiny,bogus")


@pytest.mark.parametrize("path, value, message", [
    ("model.encoder.shortcut", "C", "config.model.encoder.shortcut: must be one of ['A', 'B']"),
    ("model.encoder.strides", (1, 2, 2), "config.model.encoder.strides: must be a tuple of 4"),
    ("model.encoder.stem_kernel", 4, "config.model.encoder.stem_kernel: must be an odd"),
    ("train.batch_size", 0, "config.train.batch_size: must be a positive integer (got 0)"),
    ("train.b1", 1.5, "config.train.b1: must be in [0, 1)"),
    ("data.mri_shape", (176, 176), "config.data.mri_shape: must be a tuple of 3"),
    ("loss.aux_weights.laterality", -1.0, "config.loss.aux_weights.laterality: must be >= 0"),
    ("model.pretrained", "/no/such/file.pth", "config.model.pretrained: must be '' or an existing"),
])
def test_invalid_values_are_named(path, value, message):
  config = iMRrhpc.get_config()
  node = config
  *parents, leaf = path.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(configuration.ConfigError) as raised:
    configuration.validate(config)
  assert message in str(raised.value)


def test_every_validation_rule_names_a_real_field():
  configs = (common.get_config(), demo.get_config(), evaluate.get_config(),
             benchmark.get_config())
  for path in configuration.RULES:
    assert any(configuration._lookup(c, path) is not configuration._MISSING
               for c in configs), path


def _main(tmp_path, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-m", "mrp_jax.main", "--workdir", str(tmp_path),
                         *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_names_a_misspelt_field(tmp_path):
  result = _main(tmp_path, "--config", "configs/iMRrhpc.py:tiny", "--config.train.batchsize=3")
  assert result.returncode != 0
  assert "batchsize" in result.stderr and 'Did you mean "batch_size"' in result.stderr
  assert "Traceback" not in result.stderr


def test_cli_names_an_invalid_value(tmp_path):
  result = _main(tmp_path, "--config", "configs/iMRrhpc.py:tiny",
                 "--config.model.encoder.norm=layer")
  assert result.returncode != 0
  assert "config.model.encoder.norm: must be one of ['batch', 'group'] (got 'layer')" in \
      result.stderr


def test_describe_job(tmp_path):
  result = _main(tmp_path, "--config", "configs/iMRrhpc.py:tiny", "--config.job=describe")
  assert result.returncode == 0, result.stderr
  summary = json.loads((tmp_path / "describe.json").read_text())
  assert summary["model"] == "iMRrhpc"
  assert summary["outputs"]["logit"] == [[4], "float32"]
  assert summary["batch"]["mri"][0] == [4, 2, 22, 22, 44]
  assert summary["parameters"] == sum(summary["parameters_by_module"].values())
  assert "iMRrhpc:" in result.stdout
