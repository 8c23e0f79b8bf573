"""iMGrhpc: 2D ResNet18 over the Pre-NAT mammogram (512 x 1024), fused with rhpc.

Command:
  python -m mrp_jax.main --config configs/iMGrhpc.py --workdir runs/iMGrhpc \
      --config.data.records=/data/records
The mammogram is Pre-NAT at every phase, so the phase embedding carries no information and is
off by default. Variants as in configs/common.py.
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.model.name = "iMGrhpc"
  config.model.encoder.shortcut = "B"  # torchvision layout (ImageNet weights)
  config.model.encoder.layout = "resnet"
  config.model.time_embedding = False
  config.train.batch_size = 32  # authors: 32 mammograms per batch
  common.apply_variants(config, arg)
  return config
