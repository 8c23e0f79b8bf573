"""pretrain: a self-supervised (SimCLR) start for the mammogram or MRI encoder, no labels used.

Command:
  python -m mrp_jax.main --config configs/pretrain.py --workdir runs/pretrain_mg \
      --config.data.records=/data/records
then train the fused model from it:
  python -m mrp_jax.main --config configs/iMGrhpc.py --workdir runs/iMGrhpc \
      --config.data.records=/data/records --config.model.encoder_init=runs/pretrain_mg
Variant 'mri' pretrains the iMRrhpc encoder instead (its encoder fields as configs/iMRrhpc.py);
'tiny' as in configs/common.py for the model and data (the steps and batch stay).
docs/pretraining.md.
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.job = "pretrain"
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  mri = "mri" in variants
  # Variants first: 'tiny' shrinks the geometry and the encoder, and the steps below stay.
  common.apply_variants(config, ",".join(v for v in variants if v != "mri"))
  config.model.name = "iMRrhpc" if mri else "iMGrhpc"
  if not mri:  # the iMGrhpc encoder's fields (configs/iMGrhpc.py)
    config.model.encoder.shortcut = "B"
    config.model.encoder.layout = "resnet"
  config.train.batch_size = 8 if mri else 64  # patients per step (each gives two views)
  config.train.num_steps = 2000
  config.train.learning_rate = 1e-3
  config.train.warmup_steps = 50
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 500
  return config
