"""Config files load, variants apply, and bad fields stop the run with the field named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import benchmark, common, demo, evaluate, iMGrhpc, iMRrhpc, rhpc
from input_pipeline import schema
from mrp_jax import configuration, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [rhpc, iMGrhpc, iMRrhpc, demo, evaluate, benchmark])
@pytest.mark.parametrize("variants", [None, "tiny", "tiny,medicalnet,paper",
                                      "no_knowledge,no_time"])
def test_every_config_and_variant_validates(module, variants):
  config = module.get_config(variants)
  main.validate(config)
  assert set(config.loss.aux_weights) == set(schema.VARIABLE_NAMES)


def test_variants_change_what_they_say():
  config = iMRrhpc.get_config("medicalnet,paper,no_time")
  assert config.model.encoder.layout == "medicalnet" and config.model.encoder.shortcut == "A"
  assert config.train.optimizer == "paper" and config.train.learning_rate == 1e-4
  assert config.train.b1 == 0.5 and config.train.grad_clip_norm == 0.25
  assert config.model.time_embedding is False and config.model.knowledge_predictor is True
  with pytest.raises(ValueError, match="unknown config variant 'bogus'"):
    iMRrhpc.get_config("tiny,bogus")


def test_demo_variants_paper_scale_and_ablations():
  from mrp_jax import demo as demo_job
  base, paper = demo.get_config(), demo.get_config("paper")
  assert paper.demo.patients == 3352 and tuple(paper.demo.split_fractions) == (0.8, 0.1, 0.1)
  # The paper-scale runs' measured steps, whatever the demo's own.
  assert {name: paper.demo.train[name].steps for name in base.demo.train} == demo.PAPER_STEPS
  assert all(paper.demo.train[name].batch_size == base.demo.train[name].batch_size
             for name in base.demo.train)
  # The models' optimiser is not the authors' (that is the model configs' own `paper`).
  assert paper.train.optimizer == base.train.optimizer
  ablated = demo.get_config("paper,no_knowledge")
  assert ablated.demo.ablation == "no_knowledge" and ablated.demo.patients == 3352
  for name, knowledge in (("rhpc", True), ("iMGrhpc", False), ("iMRrhpc", False)):
    cfg = demo_job.train_config(ablated, name, Path("records"), None)
    assert cfg.model.knowledge_predictor is knowledge, name
    assert cfg.model.time_embedding == demo_job.train_config(base, name, Path("r"), None
                                                             ).model.time_embedding
  assert demo_job.train_config(demo.get_config("no_time"), "iMRrhpc", Path("r"), None
                               ).model.time_embedding is False



def test_the_demo_mri_layout_reaches_imrrhpc_alone(tmp_path):
  """config.demo.mri_layout sets iMRrhpc's encoder layout and nothing else: the same train
  config as a copy of configs/iMRrhpc.py that sets the layout itself (the way the paper-scale
  run with the stride-1 stem was first measured); a layout ResNet lacks is refused by name."""
  from mrp_jax import demo as demo_job
  base, stem = demo.get_config("paper"), demo.get_config("paper")
  stem.demo.mri_layout = "monai"
  for name in ("rhpc", "iMGrhpc"):
    assert (demo_job.train_config(stem, name, Path("r"), None).to_dict()
            == demo_job.train_config(base, name, Path("r"), None).to_dict()), name
  via_field = demo_job.train_config(stem, "iMRrhpc", Path("r"), None)
  assert via_field.model.encoder.layout == "monai"
  assert demo_job.train_config(base, "iMRrhpc", Path("r"), None).model.encoder.layout == "resnet"
  copy = tmp_path / "iMRrhpc_stem.py"
  copy.write_text("from configs import iMRrhpc\n\n\ndef get_config(arg=None):\n"
                  "  config = iMRrhpc.get_config(arg)\n"
                  "  config.model.encoder.layout = 'monai'\n  return config\n")
  base.demo.configs.iMRrhpc = str(copy)
  assert demo_job.train_config(base, "iMRrhpc", Path("r"), None).to_dict() == via_field.to_dict()
  stem.demo.mri_layout = "vgg"
  with pytest.raises(configuration.ConfigError, match="config.demo.mri_layout: must be one of"):
    configuration.validate(stem, demo_job.CONFIG_CHECKS)


@pytest.mark.parametrize("path, value, message", [
    ("model.encoder.shortcut", "C", "config.model.encoder.shortcut: must be one of ['A', 'B']"),
    ("model.encoder.strides", (1, 2, 2), "config.model.encoder.strides: must be a tuple of 4"),
    ("model.encoder.stem_kernel", 4, "config.model.encoder.stem_kernel: must be an odd"),
    ("train.batch_size", 0, "config.train.batch_size: must be a positive integer (got 0)"),
    ("train.b1", 1.5, "config.train.b1: must be in [0, 1)"),
    ("data.geometry", "coarse", "config.data.geometry: must be one of ['', 'full', "),
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
    main.validate(config)
  assert message in str(raised.value)


@pytest.mark.parametrize("module, path, value, message", [
    (evaluate, "evaluate.threshold", "otsu",
     "config.evaluate.threshold: must be one of ['youden'] or a probability in (0, 1)"),
    (evaluate, "evaluate.cohort", "all", "config.evaluate.cohort: must be one of"),
    (benchmark, "benchmark.parts", ("eval", "speed"),
     "config.benchmark.parts: must be a non-empty tuple of ['eval', 'train'"),
    (demo, "demo.patients", 11, "config.demo.patients: must be an integer >= 12"),
    (rhpc, "augment.mri_zoom", 1.5, "config.augment.mri_zoom must be < 1"),
    (rhpc, "mesh.fsdp_min_size", 0, "config.mesh.fsdp_min_size: must be a positive integer"),
])
def test_each_job_checks_its_sections(module, path, value, message):
  """Each job's checks (main.JOBS) reach the sections its modules read."""
  config = module.get_config()
  section, leaf = path.split(".")
  config[section][leaf] = value
  with pytest.raises(configuration.ConfigError) as raised:
    main.validate(config)
  assert message in str(raised.value)


def test_a_job_checks_only_what_it_reads():
  """The evaluate job does not read config.train (each run has its own): a bad value there
  does not stop it; the train job refuses it."""
  config = evaluate.get_config()
  config.train.b1 = 1.5
  main.validate(config)
  config.job = "train"
  with pytest.raises(configuration.ConfigError, match=r"config\.train\.b1"):
    main.validate(config)


def test_every_validation_rule_names_a_real_field():
  configs = (common.get_config(), demo.get_config(), evaluate.get_config(),
             benchmark.get_config())
  tables = [check for job in main.JOBS.values() for check in job.checks()
            if not callable(check)]
  assert tables
  for path in {path for table in tables for path in table}:
    assert any(configuration.lookup(c, path) is not configuration.MISSING
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


@pytest.mark.parametrize("spec, hint", [
    ("configs/rhpcc.py", "did you mean configs/rhpc.py?"),
    ("configs/rhpcc.py:tiny --config.train.batch_size=3", "did you mean configs/rhpc.py?"),
    ("confs/rhpc.py", "no folder 'confs'"),
])
def test_cli_names_a_missing_config_file(tmp_path, spec, hint):
  path, *overrides = spec.split()
  result = _main(tmp_path, "--config", path, *overrides)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert f"no config file '{path.partition(':')[0]}'" in lines[0] and hint in lines[0]


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
