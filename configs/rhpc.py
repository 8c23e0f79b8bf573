"""rhpc: the uni-modal baseline on the 22 radiological / histopathological / personal / clinical
variables (per-variable Linear+ELU, two-layer ELU MLP to 256, linear classifier).

Command:
  python -m mrp_jax.main --config configs/rhpc.py --workdir runs/rhpc \
      --config.data.records=/data/records
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.model.name = "rhpc"
  config.model.dtype = "float32"  # no convolutions: bf16 buys nothing
  config.train.batch_size = 64
  config.train.num_steps = 3000
  common.apply_variants(config, arg)
  return config
