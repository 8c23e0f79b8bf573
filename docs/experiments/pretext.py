"""The pretrain job's own SimCLR step run over an array of mammograms, for the experiment
scripts (mammogram_pretraining.py, mammogram_resolution.py). No flags, so either can import it."""

import jax
import numpy as np

from mrp_jax import configuration
from mrp_jax.core import train_step
from mrp_jax.training import pretrain


def pretrain_on_images(x: np.ndarray, steps: int, seed: int):
  """``steps`` of ``pretrain.make_step`` (configs/pretrain.py:tiny, its batch of 64) on images
  drawn from ``x`` [N, rows, cols] without labels. Returns the final state, the contrastive
  model and the loss of every step."""
  config = configuration.load("configs/pretrain.py:tiny")
  config.seed = seed
  config.train.num_steps = steps
  model = pretrain.create_model(config)
  optimizer = train_step.create_optimizer(config.train)
  state = pretrain._init_state(model, x.shape[1:], optimizer, jax.random.key(seed))
  step = jax.jit(pretrain.make_step(model, optimizer, config), donate_argnums=0)
  rng = np.random.default_rng(seed)
  b = config.train.batch_size
  losses = []
  for _ in range(steps):
    batch = {"mg": x[rng.choice(len(x), b, replace=False)][:, None],
             "mg_mask": np.ones((b, 1), bool), "example_mask": np.ones((b,), np.float32)}
    state, metrics = step(state, batch)
    losses.append(metrics["loss"])
  return state, model, [float(v) for v in jax.device_get(losses)]
