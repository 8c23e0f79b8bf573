"""The fusion models: shapes for every input combination, Siamese sharing, ablations, losses."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_as_accurate_as

from configs import iMGrhpc, iMRrhpc, rhpc
from input_pipeline import clinical_table, encoding, schema
from input_pipeline.schema import Phase
from mrp_jax import models
from mrp_jax.models import losses

MRI_SHAPE = (8, 8, 16)
MG_SHAPE = (32, 16)
B = 4


def _config(module, variants="tiny"):
  return module.get_config(variants)


def _batch(name, rng, combination):
  """A random batch; combination: 'pre', 'pre+mid', 'pre+post', 'mixed', 'mri_missing',
  'mg_missing'."""
  batch = models.dummy_batch(name, B, MRI_SHAPE, MG_SHAPE)
  batch["rhpc"] = encoding.model_inputs(clinical_table.parse_rows(
      [{"age": 40 + 5 * i, "subtype": ["TNBC", "luminal a"][i % 2]} for i in range(B)]))
  key = models.IMAGE_KEYS[name]
  if key is None:
    return batch
  batch[key] = rng.normal(size=batch[key].shape).astype(np.float32)
  mask, phase = batch[f"{key}_mask"], batch[f"{key}_phase"]
  if key == "mri":
    phase[:, 0] = Phase.PRE
    if combination == "pre":
      mask[:, 1] = False
    elif combination in ("pre+mid", "pre+post"):
      phase[:, 1] = Phase.MID if combination == "pre+mid" else Phase.POST
    elif combination == "mixed":
      mask[0, 1] = False
      phase[1:, 1] = [Phase.MID, Phase.POST, Phase.POST]
    elif combination == "mri_missing":
      mask[:] = False
  elif combination == "mg_missing":
    mask[:] = False
  batch[key] = np.where(mask.reshape(mask.shape + (1,) * (batch[key].ndim - 2)), batch[key], 0)
  return batch


@pytest.fixture(scope="module")
def built():
  """Each model with initialised variables (built once: init compiles take seconds)."""
  out = {}
  for name, module in (("rhpc", rhpc), ("iMGrhpc", iMGrhpc), ("iMRrhpc", iMRrhpc)):
    model = models.create_model(_config(module).model)
    batch = models.dummy_batch(name, B, MRI_SHAPE, MG_SHAPE)
    init = jax.jit(lambda b: model.init(jax.random.key(0), b, train=False))
    out[name] = (model, init(batch))
  return out


def _trained_head(variables):
  """``variables`` with a non-zero last response layer, as after training (it starts at zero
  beside the rhpc skip connection, so at init the images do not move the fused logit)."""
  params = dict(variables["params"])
  head = dict(params["response_head_1"])
  head["kernel"] = jnp.full_like(head["kernel"], 0.1)
  params["response_head_1"] = head
  return {**variables, "params": params}


_APPLY_CACHE = {}


def _apply(model, variables, batch, train):
  """Jitted apply, compiled once per model and mode (the masks are data, not shapes)."""
  key = (model, train)
  if key not in _APPLY_CACHE:
    _APPLY_CACHE[key] = jax.jit(lambda v, b: model.apply(
        v, b, train=train, mutable=["batch_stats"] if train else False,
        rngs={"dropout": jax.random.key(0)}))
  out = _APPLY_CACHE[key](variables, batch)
  return out[0] if train else out


@pytest.mark.parametrize("name, combination", [
    ("rhpc", "pre"),
    ("iMRrhpc", "pre"), ("iMRrhpc", "pre+mid"), ("iMRrhpc", "pre+post"),
    ("iMRrhpc", "mixed"), ("iMRrhpc", "mri_missing"),
    ("iMGrhpc", "pre"), ("iMGrhpc", "mg_missing"),
])
def test_outputs_for_every_input_combination(built, name, combination):
  model, variables = built[name]
  batch = _batch(name, np.random.default_rng(0), combination)
  for train in (False, True):
    outputs = _apply(model, variables, batch, train)
    assert outputs["logit"].shape == (B,) and outputs["logit"].dtype == jnp.float32
    assert np.isfinite(np.asarray(outputs["logit"])).all()
    if name == "rhpc":
      continue
    assert outputs["image_logit"].shape == (B,)
    assert outputs["aux"].shape == (B, encoding.AUX_DIM)
    slots = 2 if name == "iMRrhpc" else 1
    assert outputs["image_features"].shape == (B, slots * 8 * 8)
    key = models.IMAGE_KEYS[name]
    np.testing.assert_array_equal(outputs["image_present"], batch[f"{key}_mask"].any(axis=1))
    # Missing slots contribute exactly zero features.
    image_features = np.asarray(outputs["image_features"]).reshape(B, slots, -1)
    assert np.all(image_features[~batch[f"{key}_mask"]] == 0)
    loss, terms = losses.compute_loss(outputs, batch, response_weight=10.0,
                                      image_response_weight=10.0,
                                      aux_weights=dict(_config(rhpc).loss.aux_weights))
    assert np.isfinite(float(loss))
    if combination in ("mri_missing", "mg_missing"):
      assert float(terms["loss/image_response"]) == 0.0  # no image: no image-only loss


def test_siamese_branches_share_parameters_and_both_receive_gradient(built):
  model, variables = built["iMRrhpc"]
  assert set(variables["params"]) >= {"image_encoder"}
  assert not any("encoder_1" in k or "image_encoder_" in k for k in variables["params"])
  batch = _batch("iMRrhpc", np.random.default_rng(1), "pre+post")

  def grad_through(slot):
    def f(params):
      out = model.apply({**variables, "params": params}, batch, train=False)
      return jnp.sum(out["image_features"].reshape(B, 2, -1)[:, slot])
    return jax.jit(jax.grad(f))(variables["params"])["image_encoder"]

  for slot in (0, 1):
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grad_through(slot))]
    assert all(n > 0 for n in norms)  # every encoder parameter is reached from either branch

  def image_grad(images):
    out = model.apply(_trained_head(variables), {**batch, "mri": images}, train=False)
    return jnp.sum(out["logit"])
  g = jax.jit(jax.grad(image_grad))(jnp.asarray(batch["mri"]))
  assert float(jnp.abs(g[:, 0]).sum()) > 0 and float(jnp.abs(g[:, 1]).sum()) > 0


def test_joint_and_separate_siamese_batching_agree_in_eval(built):
  model, variables = built["iMRrhpc"]
  config = _config(iMRrhpc)
  config.model.siamese_batching = "separate"
  separate = models.create_model(config.model)
  batch = _batch("iMRrhpc", np.random.default_rng(2), "mixed")
  joint_out = _apply(model, variables, batch, train=False)
  separate_out = _apply(separate, variables, batch, train=False)  # same parameter tree
  # One 2B call and two B calls sum in other orders: each as close to the float64 function.
  config.model.dtype = "float64"
  with jax.enable_x64(True):
    exact = _apply(models.create_model(config.model),
                   jax.tree.map(lambda v: jnp.asarray(np.asarray(v), jnp.float64), variables),
                   {k: v.astype(np.float64) if v.dtype == np.float32 else v
                    for k, v in batch.items()}, train=False)
  assert_as_accurate_as(joint_out["logit"], separate_out["logit"], exact["logit"])


def _param_paths(model, name):
  batch = models.dummy_batch(name, 1, MRI_SHAPE, MG_SHAPE)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  flat = flax.traverse_util.flatten_dict(shapes["params"])
  return {"/".join(k): int(np.prod(v.shape)) for k, v in flat.items()}


@pytest.mark.parametrize("variant, removed_prefixes", [
    ("no_knowledge", ("knowledge_0/", "knowledge_rhpc/", "knowledge_response/")),
    ("no_time", ("time_embedding/",)),
])
def test_each_ablation_removes_exactly_its_parameters(variant, removed_prefixes):
  full = _param_paths(models.create_model(_config(iMRrhpc).model), "iMRrhpc")
  ablated = _param_paths(models.create_model(_config(iMRrhpc, f"tiny,{variant}").model),
                         "iMRrhpc")
  removed = {k: v for k, v in full.items() if k not in ablated}
  assert removed and all(k.startswith(removed_prefixes) for k in removed)
  assert {k: full[k] for k in ablated} == ablated  # everything else keeps its shape
  if variant == "no_time":
    assert sum(removed.values()) == 3 * 64 + 64  # one-hot(3) -> Linear(F=64) with bias
  else:
    head = _config(iMRrhpc).model.head_dim
    assert sum(removed.values()) == (2 * 64 + 1) * head + (head + 1) * (encoding.AUX_DIM + 1)


def test_unknown_rhpc_targets_do_not_enter_the_loss(built):
  model, variables = built["iMRrhpc"]
  batch = _batch("iMRrhpc", np.random.default_rng(3), "pre")
  parsed = clinical_table.parse_rows([{"laterality": "left"}, {"laterality": ""}, {}, {}])
  batch["aux_targets"], batch["aux_masks"] = encoding.aux_targets(parsed)
  outputs = _apply(model, variables, batch, train=False)
  _, terms = losses.compute_loss(outputs, batch, response_weight=1.0, image_response_weight=1.0,
                                 aux_weights=dict(_config(rhpc).loss.aux_weights))
  start, _ = encoding.AUX_SLICES[schema.VARIABLE_NAMES.index("laterality")]
  logits = np.asarray(outputs["aux"][0, start:start + 2], np.float64)
  expected = -(logits[0] - np.log(np.exp(logits).sum()))  # only patient 0 has a target
  assert float(terms["loss/aux/laterality"]) == pytest.approx(expected, rel=1e-5)
  assert float(terms["loss/aux/molecular_subtype"]) == 0.0  # Unknown for every patient


def test_modality_dropout_hides_images_from_the_response_head_in_training_only(built):
  model, variables = built["iMRrhpc"]
  variables = _trained_head(variables)
  batch = _batch("iMRrhpc", np.random.default_rng(0), "pre+post")
  other = dict(batch, mri=np.random.default_rng(1).normal(size=batch["mri"].shape).astype(
      batch["mri"].dtype))
  rngs = {"dropout": jax.random.key(3)}

  def logits(m, b, train):
    out = m.apply(variables, b, train=train, mutable=["batch_stats"] if train else False,
                  rngs=rngs)
    return np.asarray((out[0] if train else out)["logit"])

  always = model.clone(modality_dropout=0.999999)
  never = model.clone(modality_dropout=0.0)
  # Dropped for every example: the fused logit no longer depends on the images...
  # Exactly: the hidden image features enter the head as exact zeros either way.
  np.testing.assert_array_equal(logits(always, batch, True), logits(always, other, True))
  # ...while without dropout it does, and evaluation ignores the setting.
  assert np.abs(logits(never, batch, True) - logits(never, other, True)).max() > 1e-4
  np.testing.assert_array_equal(logits(always, batch, False), logits(never, batch, False))
  with pytest.raises(Exception, match="dropout"):
    always.apply(variables, batch, train=True, mutable=["batch_stats"])  # no rng given
