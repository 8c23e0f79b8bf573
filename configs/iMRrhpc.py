"""iMRrhpc: the Siamese 3D ResNet18 over longitudinal DCE-MRI subtractions, time embedding, rhpc.

Command:
  python -m mrp_jax.main --config configs/iMRrhpc.py --workdir runs/iMRrhpc \
      --config.data.records=/data/records
Variants: ':tiny' (CPU test size), ':medicalnet' (MedicalNet's dilated layout), ':paper' (the
authors' optimiser), ':no_knowledge' / ':no_time' (the paper's ablations).
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.model.name = "iMRrhpc"
  config.model.encoder.shortcut = "A"  # MedicalNet weights are shortcut A
  config.train.batch_size = 8  # authors: 8 MRI pairs per batch
  common.apply_variants(config, arg)
  return config
