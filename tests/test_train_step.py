"""The train step learns: a few hundred steps on random data with a planted rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import iMRrhpc, rhpc
from input_pipeline import clinical_table, encoding, schema
from input_pipeline.feed import batching
from input_pipeline.schema import Phase
from mrp_jax import models
from mrp_jax.core import train_step

SUBTYPES = [c.name for c in schema.BY_NAME["molecular_subtype"].categories]


def _rhpc_batch(rng, n):
  """Random patients; pCR iff the subtype is HER2-enriched or triple negative (planted)."""
  subtype = rng.integers(0, len(SUBTYPES), n)
  rows = [{"molecular_subtype": SUBTYPES[s], "age": float(rng.uniform(30, 80)),
           "laterality": rng.choice(["left", "right"])} for s in subtype]
  parsed = clinical_table.parse_rows(rows)
  batch = models.dummy_batch("rhpc", n)
  batch["rhpc"] = encoding.model_inputs(parsed)
  batch["aux_targets"], batch["aux_masks"] = encoding.aux_targets(parsed)
  batch["label"] = np.isin(subtype, [4, 5]).astype(np.float32)
  return batch


def _mri_batch(rng, n, shape=(8, 8, 16)):
  """Random volumes and random rhpc; pCR iff the follow-up volume lacks the bright blob that
  every baseline has (the tumour 'disappeared'): only the images carry the label."""
  batch = models.dummy_batch("iMRrhpc", n, mri_shape=shape)
  parsed = clinical_table.parse_rows([{"age": float(a)} for a in rng.uniform(30, 80, n)])
  batch["rhpc"] = encoding.model_inputs(parsed)
  batch["aux_targets"], batch["aux_masks"] = encoding.aux_targets(parsed)
  label = rng.integers(0, 2, n).astype(np.float32)
  volumes = rng.normal(0, 1, (n, 2, *shape)).astype(np.float32)
  volumes[:, :, 2:6, 2:6, 4:10] += 3.0
  volumes[label == 1, 1, 2:6, 2:6, 4:10] -= 3.0
  batch["mri"] = volumes
  batch["mri_phase"][:] = [Phase.PRE, Phase.POST]
  batch["label"] = label
  return batch


def _train(config, make_batch, steps):
  model = models.create_model(config.model)
  optimizer = train_step.create_optimizer(config.train)
  rng = np.random.default_rng(0)
  state = jax.jit(lambda b: train_step.init_state(model, b, optimizer, jax.random.key(0)))(
      make_batch(rng, config.train.batch_size))
  step = jax.jit(train_step.make_train_step(model, optimizer, config.loss,
                                            train_step.learning_rate_schedule(config.train)),
                 donate_argnums=0)
  history = []
  for _ in range(steps):
    state, metrics = step(state, make_batch(rng, config.train.batch_size))
    history.append({k: float(v) for k, v in metrics.items()})
  test = make_batch(np.random.default_rng(1), 64)
  logits = jax.jit(lambda s, b: model.apply({"params": s.params, "batch_stats": s.batch_stats},
                                            b, train=False)["logit"])(state, test)
  return history, roc_auc_score(test["label"], np.asarray(logits))


def _mean(history, key, part):
  return np.mean([h[key] for h in (history[:20] if part == "first" else history[-20:])])


def test_rhpc_model_learns_a_planted_rule():
  config = rhpc.get_config("tiny")
  config.train.batch_size, config.train.num_steps = 32, 200
  config.train.learning_rate = 3e-3
  history, auroc = _train(config, _rhpc_batch, 200)
  assert _mean(history, "loss/response", "last") < 0.25 * _mean(history, "loss/response", "first")
  assert auroc > 0.95  # held-out patients; chance is 0.5
  assert all(np.isfinite(h["norm/grads"]) and h["norm/grads"] > 0 for h in history)
  assert history[0]["learning_rate"] < history[5]["learning_rate"]  # warmup


def test_iMRrhpc_learns_an_image_only_rule():
  config = iMRrhpc.get_config("tiny")
  config.train.batch_size, config.train.num_steps = 8, 150
  config.train.learning_rate = 3e-3
  history, auroc = _train(config, _mri_batch, 150)
  first, last = (_mean(history, "loss/response", p) for p in ("first", "last"))
  assert last < 0.5 * first
  assert _mean(history, "loss/image_response", "last") < 0.5 * _mean(
      history, "loss/image_response", "first")
  assert auroc > 0.9  # the rhpc are noise: only the Siamese image branch can explain this
  assert "loss/aux/age" in history[0]


@pytest.mark.parametrize("preset", ["adamw", "paper"])
def test_optimizer_presets(preset):
  config = rhpc.get_config("tiny,paper" if preset == "paper" else "tiny")
  schedule = train_step.learning_rate_schedule(config.train)
  if preset == "paper":
    assert float(schedule(0)) == float(schedule(1000)) == pytest.approx(1e-4)
  else:
    peak = config.train.learning_rate
    assert float(schedule(0)) == 0.0
    assert float(schedule(config.train.warmup_steps)) == pytest.approx(peak)
    assert float(schedule(config.train.num_steps)) == pytest.approx(0.0, abs=1e-9)
  optimizer = train_step.create_optimizer(config.train)
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.full(3, 100.0)}
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  assert np.all(np.isfinite(np.asarray(updates["w"])))


def test_a_step_on_the_pipelines_views_is_the_step_on_the_stacked_batch():
  """The input pipeline's views (per row, a tuple of its slots' volumes, input_pipeline/
  batching.py) are stacked inside the jitted step, before augmentation: the train job's step
  gives the same state and metrics, bit for bit, as on the batch stacked on the host, and the
  eval step the same outputs."""
  from mrp_jax.core import sharding
  from mrp_jax.core import state as state_lib

  config = iMRrhpc.get_config("tiny")
  config.model.encoder.width = 4
  config.model.head_dim = config.model.rhpc_hidden_dim = 16
  config.train.warmup_steps = 0
  mesh = sharding.make_mesh(jax.devices()[:1])
  spec = batching.BatchSpec(mri_shape=(8, 8, 16), mri_dtype="float16", mg_shape=(32, 16),
                            mg_dtype="uint16")
  recipe = state_lib.build_state(config, mesh, spec)
  step = state_lib.jit_train_step(recipe, config, mesh, config.augment)
  batch = _mri_batch(np.random.default_rng(0), 4)
  batch["mri"] = batch["mri"].astype(np.float16)  # as records store them
  views = dict(batch, mri=tuple(tuple(batch["mri"][i, s] for s in range(2)) for i in range(4)))
  outcomes = [step(recipe.create(0), sharding.global_batch(b, mesh)) for b in (batch, views)]
  (state_a, metrics_a), (state_b, metrics_b) = jax.device_get(outcomes)
  jax.tree.map(np.testing.assert_array_equal, metrics_a, metrics_b)
  jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
  jax.tree.map(np.testing.assert_array_equal, state_a.batch_stats, state_b.batch_stats)
  # The eval step (validation, evaluate) too.
  from mrp_jax.core import inference
  eval_step = inference.jit_eval_step(recipe.model)
  a, b = (jax.device_get(eval_step(state_a.params, state_a.batch_stats,
                                   sharding.global_batch(x, mesh))) for x in (batch, views))
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_train_job_chooses_views_on_one_device_without_workers():
  import ml_collections

  from mrp_jax.core import sharding
  from mrp_jax.training.train import uses_views

  one = sharding.make_mesh(jax.devices()[:1])
  data = lambda transfer, workers: ml_collections.ConfigDict(  # noqa: E731
      {"transfer": transfer, "workers": workers})
  assert uses_views(data("auto", 0), one)
  assert not uses_views(data("auto", 2), one)  # batches come from the workers' shared memory
  assert not uses_views(data("batch", 0), one)
  assert not uses_views(data("auto", 0), one, {"format_version": 1})  # unaligned volumes
  assert uses_views(data("auto", 0), one, {"format_version": 2})
  assert uses_views(data("views", 0), one)
  with pytest.raises(ValueError, match="config.data.transfer='views' needs config.data.workers=0"):
    uses_views(data("views", 2), one)
