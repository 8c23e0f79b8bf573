"""The pretrain job and the options that start and regularise a fused model's image encoder."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_train_config

from configs import iMGrhpc, iMRrhpc
from configs import pretrain as pretrain_config
from input_pipeline.feed import pipeline
from mrp_jax import configuration, models
from mrp_jax.core import train_step
from mrp_jax.training import checks as train_checks
from mrp_jax.training import pretrain, train

# 40 steps left the last logged losses 0.07 below the first in one cohort of the suite's (each
# suite run draws its tiny cohort's pseudonyms afresh); at 80 three cohorts fell by 0.36-0.47.
STEPS = 80


def _config(records, **train):
  config = pretrain_config.get_config("tiny")
  config.data.records = str(records)
  config.train.num_steps = STEPS
  config.train.batch_size = 16  # every usable patient of the tiny cohort in each batch
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 16
  for key, value in train.items():
    config.train[key] = value
  return config


def _encoder(workdir):
  with ocp.StandardCheckpointer() as reader:
    restored = reader.restore(Path(workdir).resolve() / pretrain.ENCODER_DIR)
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(restored)}


@pytest.fixture(scope="module")
def pretrained(training_records, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain") / "run"
  pretrain.pretrain(_config(training_records), workdir)
  return workdir


def test_the_contrastive_loss_falls(pretrained):
  lines = [json.loads(l) for l in (pretrained / "metrics.jsonl").read_text().splitlines()]
  losses = [l["loss"] for l in lines]
  assert len(losses) == STEPS // 2 and all(np.isfinite(losses))
  assert all(l["images"] == 16 for l in lines)
  # Projections that tell nothing give log(2N - 1) = log(31) = 3.43 for 16 pairs; the views of
  # the 16 images seen at every step become easier to pair.
  assert np.mean(losses[-5:]) < min(np.mean(losses[:5]), np.log(31)) - 0.1, losses
  info = json.loads((pretrained / pretrain.ENCODER_INFO).read_text())
  assert info["model"] == "iMGrhpc" and info["steps"] == STEPS
  assert info["splits"] == ["train", "validation", "test"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(pretrained, training_records,
                                                                 tmp_path, monkeypatch):
  workdir = tmp_path / "run"

  class Stop(Exception):
    pass

  class StoppingLog(pretrain.MetricLog):
    def write(self, step, values):
      if step == 20:  # four steps after the checkpoint at step 16
        raise Stop
      super().write(step, values)

  monkeypatch.setattr(pretrain, "MetricLog", StoppingLog)
  with pytest.raises(Stop):
    pretrain.pretrain(_config(training_records), workdir)
  assert not (workdir / pretrain.ENCODER_INFO).exists()
  monkeypatch.undo()
  pretrain.pretrain(_config(training_records), workdir)
  ours, theirs = _encoder(workdir), _encoder(pretrained)
  assert ours.keys() == theirs.keys()
  for key in ours:  # the same program on the same data from the same state: the same bits
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_a_fused_model_starts_from_exactly_the_pretrained_encoder(pretrained, training_records,
                                                                  tmp_path):
  """encoder_init loads the encoder; with its learning rate at 0 the weights stay those bits
  through training, while the heads train; the best checkpoint follows the image-only AUROC."""
  config = tiny_train_config(iMGrhpc, training_records, encoder_learning_rate_scale=0.0,
                             num_steps=2, eval_every_steps=2, checkpoint_every_steps=2,
                             best_metric="image_auroc")
  config.model.encoder_init = str(pretrained)
  config.model.feature_dropout = 0.5
  configuration.validate(config, train_checks.CONFIG_CHECKS)
  train.train_and_evaluate(config, tmp_path / "fused")
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager((tmp_path / "fused" / "checkpoints").resolve(),
                                  item_names=("state", "data"))
  state = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  encoder = {f"params/{'/'.join(str(getattr(k, 'key', k)) for k in path)}": np.asarray(leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(
                 state["params"][pretrain.ENCODER_MODULE])}
  saved = {k: v for k, v in _encoder(pretrained).items() if k.startswith("params/")}
  assert encoder.keys() == saved.keys()
  for key, value in saved.items():
    np.testing.assert_array_equal(encoder[key], value, err_msg=key)
  lines = [json.loads(l) for l in (tmp_path / "fused" / "metrics.jsonl").read_text().splitlines()]
  assert any("val/image_auroc" in l for l in lines)
  assert any(l.get("norm/updates", 0) > 0 for l in lines)  # the heads did move


def test_an_encoder_that_does_not_fit_is_refused(pretrained, training_records):
  from mrp_jax.core import sharding
  from mrp_jax.core import state as state_lib
  mesh = sharding.make_mesh(jax.devices()[:1])
  config = tiny_train_config(iMRrhpc, training_records)
  state = state_lib.build_state(config, mesh, pipeline.batch_spec(training_records)).abstract
  with pytest.raises(ValueError, match="config.model.encoder_init: .* pretrained the iMGrhpc "
                                       "encoder, not iMRrhpc's"):
    pretrain.encoder_from(pretrained, "iMRrhpc", state.params, state.batch_stats)
  config = tiny_train_config(iMGrhpc, training_records)
  config.model.encoder.width = 4
  state = state_lib.build_state(config, mesh, pipeline.batch_spec(training_records)).abstract
  with pytest.raises(ValueError, match="config.model.encoder_init: .* does not fit"):
    pretrain.encoder_from(pretrained, "iMGrhpc", state.params, state.batch_stats)
  with pytest.raises(FileNotFoundError, match="no finished pretrain run"):
    pretrain.encoder_from(pretrained.parent, "iMGrhpc", state.params, state.batch_stats)


def test_nt_xent_is_simclrs_loss_over_the_valid_images():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  valid = np.array([True, True, False, True, True])
  z = np.concatenate([a, b])
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  ok = np.concatenate([valid, valid])
  expected = []
  for i in np.flatnonzero(ok):
    partner = (i + 5) % 10
    others = [j for j in np.flatnonzero(ok) if j != i]
    logits = {j: z[i] @ z[j] / 0.5 for j in others}
    expected.append(-logits[partner] + np.log(np.sum(np.exp(list(logits.values())))))
  got = pretrain.nt_xent(jnp.asarray(a), jnp.asarray(b), jnp.asarray(valid), 0.5)
  np.testing.assert_allclose(float(got), np.mean(expected), rtol=1e-5)  # float32 vs float64
  b[2] = 100.0  # an invalid image's projection changes nothing
  again = pretrain.nt_xent(jnp.asarray(a), jnp.asarray(b), jnp.asarray(valid), 0.5)
  assert float(again) == float(got)


def test_views_keep_the_shape_and_differ_by_key():
  images = jnp.asarray(np.random.default_rng(0).random((3, 16, 8)), jnp.float32)
  one = pretrain.random_views(images, jax.random.key(0), 0.25, 0)
  assert one.shape == images.shape
  again = pretrain.random_views(images, jax.random.key(0), 0.25, 0)
  np.testing.assert_array_equal(one, again)
  assert not np.allclose(one, pretrain.random_views(images, jax.random.key(1), 0.25, 0))
  volumes = jnp.ones((2, 4, 6, 8), jnp.float32)
  assert pretrain.random_views(volumes, jax.random.key(0), 0.25, 2).shape == volumes.shape


def test_the_encoder_learning_rate_scales_only_the_encoders_updates():
  params = {"image_encoder": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(3)}}
  grads = {"image_encoder": {"w": jnp.full(3, 0.5)}, "head": {"w": jnp.full(3, 0.5)}}
  base = {"optimizer": "adamw", "learning_rate": 0.1, "warmup_steps": 0, "num_steps": 10,
          "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "grad_clip_norm": 0.0}
  plain = train_step.create_optimizer(base)
  scaled = train_step.create_optimizer(dict(base, encoder_learning_rate_scale=0.1))
  frozen = train_step.create_optimizer(dict(base, encoder_learning_rate_scale=0.0))
  decayed = train_step.create_optimizer(dict(base, encoder_weight_decay=1.0))
  # Defaults: the optimizer state is the single-group one (old checkpoints still restore).
  assert (jax.tree.structure(plain.init(params))
          == jax.tree.structure(train_step.create_optimizer(
              dict(base, encoder_learning_rate_scale=1.0, encoder_weight_decay=None))
              .init(params)))
  # The first step is at schedule(0) = 0 for a cosine without warm-up; take the second.
  def second(optimizer):
    state = optimizer.init(params)
    _, state = optimizer.update(grads, state, params)
    return optimizer.update(grads, state, params)[0]
  ref, low, zero, decay = (second(o) for o in (plain, scaled, frozen, decayed))
  np.testing.assert_allclose(low["image_encoder"]["w"], 0.1 * ref["image_encoder"]["w"],
                             rtol=1e-6)
  np.testing.assert_array_equal(low["head"]["w"], ref["head"]["w"])
  np.testing.assert_array_equal(zero["image_encoder"]["w"], 0.0)
  np.testing.assert_array_equal(decay["head"]["w"], ref["head"]["w"])
  # AdamW's decoupled decay: lr x decay x weight more shrinkage on the encoder only.
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.1, 0, 10, 0.0)(1)
  np.testing.assert_allclose(decay["image_encoder"]["w"] - ref["image_encoder"]["w"],
                             -lr * 1.0 * 1.0, rtol=1e-5)


def test_feature_dropout_acts_in_training_only():
  config = iMGrhpc.get_config("tiny")
  config.model.feature_dropout = 0.5
  config.model.modality_dropout = 0.0
  model = models.create_model(config.model)
  batch = models.dummy_batch("iMGrhpc", 4, mg_shape=(32, 16))
  batch["mg"][:] = np.random.default_rng(0).random(batch["mg"].shape)
  variables = model.init(jax.random.key(0), batch, train=False)
  plain = model.clone(feature_dropout=0.0)
  evaluated = model.apply(variables, batch, train=False)["image_features"]
  np.testing.assert_array_equal(evaluated,
                                plain.apply(variables, batch, train=False)["image_features"])
  trained, _ = model.apply(variables, batch, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(1)})
  reference, _ = plain.apply(variables, batch, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(1)})
  dropped = np.asarray(trained["image_features"]) == 0
  assert 0.2 < dropped.mean() < 0.8
  kept = np.asarray(reference["image_features"])[~dropped]
  np.testing.assert_allclose(np.asarray(trained["image_features"])[~dropped], 2 * kept,
                             rtol=1e-6)


@pytest.mark.parametrize("job, path, value, message", [
    ("pretrain", "pretrain.temperature", 0.0, "config.pretrain.temperature: must be > 0"),
    ("pretrain", "pretrain.splits", ("train", "bogus"), "config.pretrain.splits: must be"),
    ("pretrain", "pretrain.crop_min_area", 1.5, "config.pretrain.crop_min_area: must be in"),
    ("pretrain", "model.name", "rhpc", "config.model.name: the pretrain job trains an image"),
    ("train", "train.encoder_learning_rate_scale", -1.0,
     "config.train.encoder_learning_rate_scale: must be >= 0"),
    ("train", "train.encoder_weight_decay", -1.0, "config.train.encoder_weight_decay: must be"),
    ("train", "train.best_metric", "loss", "config.train.best_metric: must be one of"),
    ("train", "model.feature_dropout", 1.0, "config.model.feature_dropout: must be in [0, 1)"),
    ("train", "model.encoder_init", "/no/such/run", "config.model.encoder_init: must be '' or"),
])
def test_invalid_fields_are_named(job, path, value, message):
  config = pretrain_config.get_config() if job == "pretrain" else iMGrhpc.get_config()
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  checks = pretrain.CONFIG_CHECKS if job == "pretrain" else train_checks.CONFIG_CHECKS
  with pytest.raises(configuration.ConfigError) as raised:
    configuration.validate(config, checks)
  assert message in str(raised.value)


def test_image_auroc_needs_a_fused_model():
  from configs import rhpc
  config = rhpc.get_config()
  config.train.best_metric = "image_auroc"
  with pytest.raises(configuration.ConfigError, match="config.train.best_metric: 'image_auroc' "
                                                      "needs a fused model"):
    configuration.validate(config, train_checks.CONFIG_CHECKS)


@pytest.mark.parametrize("variants", [None, "tiny", "tiny,mri", "mri,medicalnet"])
def test_the_pretrain_config_and_its_variants_validate(variants):
  config = pretrain_config.get_config(variants)
  configuration.validate(config, pretrain.CONFIG_CHECKS)
  assert config.model.name == ("iMRrhpc" if variants and "mri" in variants else "iMGrhpc")


def test_the_cli_refuses_an_invalid_pretrain_field(tmp_path):
  import subprocess
  import sys
  root = Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "-m", "mrp_jax.main", "--workdir", str(tmp_path), "--config",
       "configs/pretrain.py:tiny", "--config.pretrain.temperature=0", "--config.data.records=x"],
      capture_output=True, text=True, cwd=root, timeout=300, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)})
  assert result.returncode != 0
  assert "config.pretrain.temperature: must be > 0 (got 0.0)" in result.stderr
