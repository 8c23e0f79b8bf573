"""The rhpc encoder and the tabular baseline model (paper, Methods: 'Model development').

Each of the 22 variables is embedded by its own Linear + ELU (age from its standardised value and
Unknown flag, every other variable from its one-hot including Unknown); the embeddings are
concatenated and passed through a two-layer ELU MLP of width 256; the baseline adds a linear
pCR classifier.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from input_pipeline import encoding, schema


class RhpcEncoder(nn.Module):
  """rhpc input [B, encoding.INPUT_DIM] -> features [B, hidden_dim].

  Attributes:
    embed_dim: width of each variable's embedding (16 in the authors' code).
    hidden_dim: width of the two MLP layers (256 in the paper).
    input_slices: (start, stop) of each variable in the input vector; the schema's by default.
  """
  embed_dim: int = 16
  hidden_dim: int = 256
  input_slices: Sequence[tuple[int, int]] = encoding.INPUT_SLICES

  @nn.compact
  def __call__(self, rhpc: jax.Array) -> jax.Array:
    rhpc = rhpc.astype(jnp.float32)
    names = schema.VARIABLE_NAMES if len(self.input_slices) == len(schema.VARIABLES) else None
    embeddings = []
    for j, (start, stop) in enumerate(self.input_slices):
      name = f"embed_{names[j]}" if names else f"embed_{j}"
      embeddings.append(nn.elu(nn.Dense(self.embed_dim, name=name)(rhpc[:, start:stop])))
    x = jnp.concatenate(embeddings, axis=-1)
    x = nn.elu(nn.Dense(self.hidden_dim, name="mlp_0")(x))
    return nn.elu(nn.Dense(self.hidden_dim, name="mlp_1")(x))


class RhpcModel(nn.Module):
  """The uni-modal rhpc baseline: RhpcEncoder + linear classifier."""
  embed_dim: int = 16
  hidden_dim: int = 256

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """Args: batch with 'rhpc' [B, INPUT_DIM]. Returns {'logit': [B]} (pCR log-odds)."""
    del train  # no dropout or normalisation
    features = RhpcEncoder(self.embed_dim, self.hidden_dim, name="rhpc_encoder")(batch["rhpc"])
    return {"logit": nn.Dense(1, name="classifier")(features)[:, 0], "rhpc_features": features}
