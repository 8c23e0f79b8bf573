"""Every configuration field, defined once. Model configs import this and override a few fields.

Variants are picked after a colon: ``--config configs/iMRrhpc.py:tiny,medicalnet``; single
fields from the command line: ``--config.train.batch_size=8``. A misspelt field or an invalid
value stops the run before any work (each job checks the sections its modules read:
mrp_jax/configuration.py).

Configs are plain data: they import nothing from the project. The code owns the lists of valid
choices and checks every field against them.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # one of mrp_jax.main.JOBS: train | evaluate | benchmark | demo | describe | pretrain
  config.job = "train"
  config.seed = 0  # model init, data order and augmentation all derive from it
  config.distributed = False  # jax.distributed.initialize() (auto when JAX_COORDINATOR_ADDRESS)
  # GPU: XLA's deterministic reductions and scatters (--xla_gpu_deterministic_ops), so the same
  # command gives the same bytes on one GPU too, at a cost in speed not yet measured. CPU runs
  # are deterministic without it (docs/design.md, "Reproducibility").
  config.deterministic_gpu = False

  # ---- devices ---------------------------------------------------------------------------------
  config.mesh = mh = ml_collections.ConfigDict()
  mh.fsdp = False  # shard parameters and optimizer state over the devices (else replicate)
  mh.fsdp_min_size = 2**18  # arrays smaller than this stay replicated under fsdp

  # ---- model ---------------------------------------------------------------------------------
  config.model = m = ml_collections.ConfigDict()
  m.name = "iMRrhpc"  # rhpc | iMGrhpc | iMRrhpc (the paper's names; MRP is their ensemble)
  m.dtype = "bfloat16"  # computation dtype; parameters are always float32
  m.rhpc_embed_dim = 16  # per-variable Linear+ELU embedding (authors' code)
  m.rhpc_hidden_dim = 256  # the paper's two-layer MLP width
  m.head_dim = 256  # hidden width of the response head and the knowledge predictor
  m.time_embedding = True  # ablation switch: phase one-hot -> Linear+ELU added to image features
  m.knowledge_predictor = True  # ablation switch: cross-modal knowledge predictor branch
  # Training only: P(response head sees no image features) per example (models/fusion.py). Not
  # in the paper; the paper variant sets 0. Why 0.5: docs/experiments.md, "The fused models on
  # small cohorts".
  m.modality_dropout = 0.5
  # Fused models: the rhpc model's linear classifier as a skip connection beside the response
  # head (whose last layer starts at zero); with rhpc_init the fused model starts as the trained
  # rhpc model and learns what the images add (docs/experiments.md, "The fused models on small
  # cohorts").
  m.rhpc_skip = True
  m.siamese_batching = "joint"  # joint (one 2B encoder call) | separate (one call per branch)
  m.encoder = e = ml_collections.ConfigDict()
  e.layout = "resnet"  # resnet (strides 2,2,2) | medicalnet (dilated) | monai (stride-1 stem)
  e.stem_kernel = 7
  e.stem_stride = config_dict.placeholder(int)  # None: the layout's
  e.strides = config_dict.placeholder(tuple)  # per stage; None: the layout's
  e.dilations = config_dict.placeholder(tuple)  # per stage; None: the layout's
  e.shortcut = "A"  # A (parameter-free, MedicalNet) | B (1x1 conv + norm, torchvision)
  e.norm = "batch"  # batch | group
  e.width = 64  # channels of the first stage; 64 is ResNet18
  e.remat = "none"  # none | dots | full: rematerialise the stem and blocks in the backward pass
  # The strided stem as a stride-1 convolution over space-to-depth blocks (same function and
  # weights; for GPUs, whose kernels handle one input channel poorly). docs/design.md, "Memory:
  # remat and the space-to-depth stem".
  e.stem_space_to_depth = False
  # How convolutions reach XLA: direct (one convolution op each) | decomposed (the forms XLA:CPU
  # runs fast: 2D convolutions over depth taps, matmuls over patches for small planes) | auto
  # (decomposed on CPU, direct on accelerators). Same function and weights; docs/design.md,
  # "Convolutions on the CPU".
  e.conv_lowering = "auto"
  m.rhpc_init = ""  # fused models: start the rhpc encoder from this rhpc train workdir's
  m.pretrained = ""  # PyTorch checkpoint for the image encoder (MedicalNet .pth / torchvision)
  # Fused models: start the image encoder from this pretrain run's workdir (its encoder/;
  # the pretrain job, configs/pretrain.py, docs/pretraining.md).
  m.encoder_init = ""
  # Training only: dropout rate on the pooled image features both heads read (0: off).
  m.feature_dropout = 0.0

  # ---- loss ----------------------------------------------------------------------------------
  config.loss = lo = ml_collections.ConfigDict()
  lo.response_weight = 10.0  # BCE on the fused pCR logit (authors' code)
  lo.image_response_weight = 10.0  # BCE on the knowledge predictor's image-only pCR logit
  # Per rhpc variable (the authors' code: x1 laterality, location, subtype; x0.1 focality,
  # in-situ, grade, and here density, histology, tumour type; x0.025 therapy; x0.01 genes and
  # menopause; x1e-4 the numeric and staging variables and sex).
  lo.aux_weights = ml_collections.ConfigDict({
      "location": 1.0,
      "laterality": 1.0,
      "focality": 0.1,
      "density": 0.1,
      "molecular_subtype": 1.0,
      "histology": 0.1,
      "tumour_type": 0.1,
      "differentiation": 0.1,
      "in_situ": 0.1,
      "age": 1e-4,
      "sex": 1e-4,
      "weight": 1e-4,
      "menarche_age": 1e-4,
      "menopause": 0.01,
      "brca1": 0.01,
      "brca2": 0.01,
      "chek2": 0.01,
      "tp53": 0.01,
      "ct": 1e-4,
      "cn": 1e-4,
      "cm": 1e-4,
      "therapy": 0.025,
  })

  # ---- data ----------------------------------------------------------------------------------
  config.data = d = ml_collections.ConfigDict()
  d.records = ""  # folder of prepared TFRecord shards (python -m input_pipeline.records.prepare)
  # The records' manifest is the one source of the geometry (MRI spacing and box, mammogram
  # size): training, evaluation and predict take it from there. A preset name of `prepare
  # --geometry` ('full', 'demo', 'tiny', 'small') makes training stop when the records were
  # prepared otherwise; '' takes the records as they are. Jobs without records (benchmark,
  # describe) build their batches at the preset ('full' when '').
  d.geometry = ""
  d.shuffle_window = 16  # records held for shuffling: RAM ~ window x 66 MB at full geometry
  # Processes reading, decoding and batching the training data (0: threads of the training
  # process, enough for the demo; a full-geometry GPU run wants several, docs/data.md, "The
  # input pipeline"). Each holds its own shuffle window; a run resumes with the same number.
  d.workers = 0
  # How the training images reach the device: 'views' (no host batch: each record's volumes,
  # pages of the mapped shards, put on the device as they are and stacked inside the step),
  # 'batch' (copied into a reused host batch, one transfer), 'auto' ('views' on one device
  # with workers = 0, else 'batch'). docs/data.md, "The input pipeline".
  d.transfer = "auto"

  # ---- augmentation (on the device, inside the train step; mrp_jax/core/augment.py) ------
  # Axes of a volume are (z, y, x) = (S-I, A-P, L-R); probabilities per example (geometry,
  # mammogram) or per volume (MRI intensity).
  config.augment = a = ml_collections.ConfigDict()
  a.enabled = True  # False: batches reach the model unchanged
  a.mri_flip_probability = (0.0, 0.0, 0.5)  # per axis z, y, x (one draw per patient)
  a.mri_affine_probability = 0.5  # chance of the rotation + zoom + translation
  a.mri_rotation_degrees = (5.0, 5.0, 5.0)  # max |angle| about z, y, x
  a.mri_zoom = 0.1  # isotropic scale factor uniform in [1 - zoom, 1 + zoom]
  a.mri_translation_voxels = 4.0  # max |shift| along each axis, voxels
  a.mri_bias_field_probability = 0.3
  a.mri_bias_field_coefficient = 0.3  # polynomial coefficients uniform in [-c, c]
  a.mri_bias_field_order = 3  # degree of the polynomial (TorchIO's default)
  a.mri_gamma_probability = 0.3
  a.mri_log_gamma = 0.3  # gamma = exp(uniform(-g, g)), TorchIO's default range
  a.mri_intensity_scale_probability = 0.5
  a.mri_intensity_scale = 0.1  # factor uniform in [1 - s, 1 + s]
  a.mri_noise_probability = 0.25
  a.mri_noise_std = 0.05  # std uniform in [0, std], units of the stored subtraction
  a.mg_vertical_flip_probability = 0.5  # rows: cranial <-> caudal
  a.mg_horizontal_flip_probability = 0.0  # columns: would put the chest wall on the right
  a.mg_contrast_probability = 0.5
  a.mg_contrast = 0.2  # factor uniform in [1 - c, 1 + c] about the breast mean
  a.mg_brightness_probability = 0.5
  a.mg_brightness = 0.1  # shift uniform in [-b, b]

  # ---- training ------------------------------------------------------------------------------
  config.train = t = ml_collections.ConfigDict()
  t.batch_size = 8  # global batch (all devices and hosts)
  t.num_steps = 10_000
  t.optimizer = "adamw"  # adamw (warmup-cosine) | paper (Adam 1e-4, betas 0.5/0.999, plateau)
  t.learning_rate = 3e-4  # peak learning rate
  t.warmup_steps = 500
  t.weight_decay = 1e-4
  # Fused models: the image encoder's learning rate as a multiple of the rest's (0: its weights
  # frozen), and its own weight decay (None: weight_decay). docs/pretraining.md.
  t.encoder_learning_rate_scale = 1.0
  t.encoder_weight_decay = config_dict.placeholder(float)
  t.b1 = 0.9
  t.b2 = 0.999
  t.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  t.log_every_steps = 50
  t.eval_every_steps = 500  # validation AUROC per phase; keeps the best checkpoint
  t.checkpoint_every_steps = 500  # resumable checkpoints (async)
  t.keep_checkpoints = 2
  t.plateau_patience = 5  # 'paper' optimizer: evaluations without gain before halving the rate
  t.plateau_factor = 0.5
  # What the best checkpoint (best/, used by evaluation) maximises: auroc (the pCR output's mean
  # validation AUROC) | image_auroc (a fused model's image-only output's).
  t.best_metric = "auroc"

  # ---- pretrain job (mrp_jax/training/pretrain.py; its steps and optimiser: config.train) ------
  config.pretrain = pt = ml_collections.ConfigDict()
  pt.splits = ("train", "validation", "test")  # whose images (never their labels) it reads
  pt.temperature = 0.2  # NT-Xent softmax temperature
  pt.crop_min_area = 0.25  # random resized crops cover [this, 1] of the image
  pt.projection_hidden_dim = 128  # SimCLR's projection MLP (dropped after pretraining)
  pt.projection_dim = 64

  # ---- validation during training (the evaluate job is configs/evaluate.py) -------------------
  config.validation = v = ml_collections.ConfigDict()
  v.batch_size = 8  # global
  v.phases = ("pre", "mid", "post")  # Pre: Pre data; Mid: Pre+Mid; Post: Pre+Post

  if arg:
    apply_variants(config, arg)
  return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> None:
  """Applies comma-separated variants, e.g. 'tiny,medicalnet,paper'."""
  for variant in filter(None, (v.strip() for v in (arg or "").split(","))):
    if variant not in VARIANTS:
      raise ValueError(f"unknown config variant {variant!r}; known: {sorted(VARIANTS)}")
    VARIANTS[variant](config)


def _tiny(config):
  """CPU-sized: 8 mm voxels, narrow encoders, few steps. For tests and CI."""
  config.model.dtype = "float32"
  config.model.encoder.width = 8
  config.model.head_dim = 32
  config.model.rhpc_hidden_dim = 32
  config.model.rhpc_embed_dim = 4
  config.data.geometry = "tiny"
  config.train.batch_size = 4
  config.train.num_steps = 20
  config.train.warmup_steps = 2
  config.train.log_every_steps = 5
  config.train.eval_every_steps = 10
  config.train.checkpoint_every_steps = 10
  config.validation.batch_size = 4
  config.data.shuffle_window = 4
  config.augment.mri_translation_voxels = 1.0  # 8 mm voxels: the default 4 would shift 32 mm


def _medicalnet(config):
  """MedicalNet's dilated layout and shortcut A (loads resnet_18_23dataset.pth as is)."""
  config.model.encoder.layout = "medicalnet"
  config.model.encoder.shortcut = "A"


def _paper(config):
  """The authors' optimiser: Adam lr 1e-4, betas (0.5, 0.999), wd 1e-6, clip 0.25; and no
  modality dropout or rhpc skip connection, which the paper does not use."""
  t = config.train
  t.optimizer = "paper"
  t.learning_rate = 1e-4
  t.b1, t.b2 = 0.5, 0.999
  t.weight_decay = 1e-6
  t.grad_clip_norm = 0.25
  t.warmup_steps = 0
  config.model.modality_dropout = 0.0
  config.model.rhpc_skip = False


def _no_knowledge(config):
  """Ablation: without the cross-modal knowledge predictor."""
  config.model.knowledge_predictor = False


def _no_time(config):
  """Ablation: without the time embedding."""
  config.model.time_embedding = False


VARIANTS = {
    "tiny": _tiny,
    "medicalnet": _medicalnet,
    "paper": _paper,
    "no_knowledge": _no_knowledge,
    "no_time": _no_time,
}
