"""Config files: loading them as the command line does, and checking them before any work.

Every problem is reported with its field's full name. Unknown fields are already refused by the
locked ConfigDict (config_flags); :func:`validate` refuses known fields with values the code
cannot honour. The lists of valid choices belong to the modules that implement them and are
imported from there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import ml_collections

from input_pipeline import schema
from input_pipeline.geometries import GEOMETRIES
from mrp_jax import benchmark, models
from mrp_jax.benchmark.gpu_target import GPUS
from mrp_jax.core import augment
from mrp_jax.core.train_step import OPTIMIZERS
from mrp_jax.evaluation.cohort import COHORTS
from mrp_jax.evaluation.evaluate import THRESHOLD_RULES
from mrp_jax.evaluation.explain import RANKINGS
from mrp_jax.models.fusion import SIAMESE_BATCHING
from mrp_jax.models.resnet import CONV_LOWERINGS, LAYOUTS, NORMS, REMAT_POLICIES, SHORTCUTS


class ConfigError(ValueError):
  """One or more config fields hold values that cannot work."""


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of ``'path/to/file.py[:variants]'``, as ``--config`` would give it.

  The file is imported by path and its ``get_config(variants)`` called (``get_config()``
  without variants), as ml_collections' config_flags does; the result is locked, so a misspelt
  field is an error here too.
  """
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise ConfigError(f"no config file {path!r}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


def _one_of(*choices):
  return (lambda v: v in choices), f"must be one of {list(choices)}"


def _positive_int(v):
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _ints(n: int | None, positive: bool = True):
  def check(v):
    if not isinstance(v, (tuple, list)) or (n is not None and len(v) != n):
      return False
    return all(_positive_int(x) if positive else isinstance(x, int) for x in v)
  return check, f"must be a tuple of {n or 'some'} positive integers"


def _positive_numbers(n: int):
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) == n
            and all(isinstance(x, (int, float)) and x > 0 for x in v))
  return check, f"must be a tuple of {n} positive numbers"


_POSITIVE_INT = (_positive_int, "must be a positive integer")
_NON_NEGATIVE = (lambda v: isinstance(v, (int, float)) and v >= 0, "must be >= 0")
_POSITIVE = (lambda v: isinstance(v, (int, float)) and v > 0, "must be > 0")
_UNIT_INTERVAL = (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "must be in [0, 1)")
_OPTIONAL_FILE = (lambda v: v == "" or os.path.isfile(v), "must be '' or an existing file")


def _is_probability(v) -> bool:
  try:
    return 0 < float(v) < 1
  except (TypeError, ValueError):
    return False


def _optional(rule):
  check, message = rule
  return (lambda v: v is None or check(v)), f"{message} (or None for the layout's)"


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: isinstance(v, int), "must be an integer"),
    "deterministic_gpu": (lambda v: isinstance(v, bool), "must be True or False"),
    "model.name": _one_of(*models.MODEL_NAMES),
    "model.dtype": _one_of("bfloat16", "float32", "float16"),
    "model.rhpc_embed_dim": _POSITIVE_INT,
    "model.rhpc_hidden_dim": _POSITIVE_INT,
    "model.head_dim": _POSITIVE_INT,
    "model.modality_dropout": _UNIT_INTERVAL,
    "model.siamese_batching": _one_of(*SIAMESE_BATCHING),
    "model.rhpc_skip": (lambda v: isinstance(v, bool), "must be True or False"),
    "model.encoder.layout": _one_of(*LAYOUTS),
    "model.encoder.stem_kernel": (lambda v: _positive_int(v) and v % 2 == 1,
                                  "must be an odd positive integer"),
    "model.encoder.stem_stride": _optional(_POSITIVE_INT),
    "model.encoder.strides": _optional(_ints(4)),
    "model.encoder.dilations": _optional(_ints(4)),
    "model.encoder.shortcut": _one_of(*SHORTCUTS),
    "model.encoder.norm": _one_of(*NORMS),
    "model.encoder.width": _POSITIVE_INT,
    "model.encoder.remat": _one_of("none", *REMAT_POLICIES),
    "model.encoder.stem_space_to_depth": (lambda v: isinstance(v, bool), "must be True or False"),
    "model.encoder.conv_lowering": _one_of("auto", *CONV_LOWERINGS),
    "model.pretrained": _OPTIONAL_FILE,
    "model.rhpc_init": (lambda v: v == "" or os.path.isfile(os.path.join(v, "config.json")),
                        "must be '' or a train workdir of an rhpc run (with config.json)"),
    "loss.response_weight": _NON_NEGATIVE,
    "loss.image_response_weight": _NON_NEGATIVE,
    **{f"loss.aux_weights.{name}": _NON_NEGATIVE for name in schema.VARIABLE_NAMES},
    "data.mri_shape": _ints(3),
    "data.mri_spacing_mm": _positive_numbers(3),
    "data.mg_shape": _ints(2),
    "train.batch_size": _POSITIVE_INT,
    "train.num_steps": _POSITIVE_INT,
    "train.optimizer": _one_of(*OPTIMIZERS),
    "train.learning_rate": _POSITIVE,
    "train.warmup_steps": (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    "train.weight_decay": _NON_NEGATIVE,
    "train.b1": _UNIT_INTERVAL,
    "train.b2": _UNIT_INTERVAL,
    "train.grad_clip_norm": _NON_NEGATIVE,
    "train.log_every_steps": _POSITIVE_INT,
    "train.eval_every_steps": _POSITIVE_INT,
    "train.checkpoint_every_steps": _POSITIVE_INT,
    "train.keep_checkpoints": _POSITIVE_INT,
    "train.plateau_patience": (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    "train.plateau_factor": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
                             "must be in (0, 1]"),
    "validation.batch_size": _POSITIVE_INT,
    "validation.phases": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                    and all(p in schema.PHASE_NAMES for p in v),
                    f"must be a non-empty tuple of {list(schema.PHASE_NAMES)}"),
    "data.records": (lambda v: isinstance(v, str), "must be a folder path (a string)"),
    "data.shuffle_window": _POSITIVE_INT,
    "data.workers": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                     "must be an integer >= 0 (0: read in the training process)"),
    "data.transfer": _one_of("auto", "views", "batch"),
    "mesh.fsdp": (lambda v: isinstance(v, bool), "must be True or False"),
    "mesh.fsdp_min_size": _POSITIVE_INT,
    "distributed": (lambda v: isinstance(v, bool), "must be True or False"),
    "evaluate.runs": (lambda v: isinstance(v, str), "must be LABEL=WORKDIR,... (a string)"),
    "evaluate.split": _one_of("validation", "test"),
    "evaluate.phases": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                        and all(p in schema.PHASE_NAMES for p in v),
                        f"must be a non-empty tuple of {list(schema.PHASE_NAMES)}"),
    "evaluate.batch_size": _POSITIVE_INT,
    "evaluate.fit_split": _one_of("train", "validation"),
    "evaluate.threshold": (lambda v: v in THRESHOLD_RULES or _is_probability(v),
                           f"must be one of {list(THRESHOLD_RULES)} or a probability in (0, 1)"),
    "evaluate.bootstrap_replicates": (lambda v: _positive_int(v) and v >= 100,
                                      "must be an integer >= 100"),
    "evaluate.readers": (lambda v: v == "" or os.path.isfile(v), "must be '' or an existing CSV"),
    "evaluate.explain_cases": (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    "evaluate.explain_steps": _POSITIVE_INT,
    "evaluate.explain_phase": _one_of(*schema.PHASE_NAMES),
    "evaluate.explain_ranking": _one_of(*RANKINGS),
    "evaluate.cohort": _one_of(*COHORTS),
    "demo.patients": (lambda v: _positive_int(v) and v >= 12,
                      "must be an integer >= 12 (the first 11 synthetic patients are the "
                      "unusual encodings and broken cases)"),
    "demo.geometry": _one_of(*GEOMETRIES),
    "demo.workers": _POSITIVE_INT,
    "demo.shard_size": _POSITIVE_INT,
    "demo.split_fractions": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(
        isinstance(x, (int, float)) and x >= 0 for x in v) and v[0] > 0 and v[1] > 0
                             and abs(sum(v) - 1) < 1e-6,
                             "must be 3 fractions (train, validation, test) summing to 1, "
                             "train and validation > 0"),
    **{f"demo.train.{m}.{k}": _POSITIVE_INT for m in models.MODEL_NAMES
       for k in ("steps", "batch_size")},
    **{f"demo.train.{m}.learning_rate": _POSITIVE for m in models.MODEL_NAMES},
    "benchmark.models": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                         and all(m in models.MODEL_NAMES for m in v),
                         f"must be a non-empty tuple of {list(models.MODEL_NAMES)}"),
    "benchmark.parts": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                        and all(p in benchmark.PARTS for p in v),
                        f"must be a non-empty tuple of {list(benchmark.PARTS)}"),
    **{f"benchmark.batch_size.{m}": _POSITIVE_INT for m in models.MODEL_NAMES},
    "benchmark.warmup_steps": (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    "benchmark.steps": _POSITIVE_INT,
    "benchmark.budget_s": _POSITIVE,
    "benchmark.pipeline_steps": _POSITIVE_INT,
    "benchmark.peak_tflops": _NON_NEGATIVE,
    "benchmark.matmul_size": _POSITIVE_INT,
    "benchmark.plan_batches": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                               and all(_positive_int(x) for x in v),
                               "must be a non-empty tuple of positive integers"),
    "benchmark.plan_compile": (lambda v: isinstance(v, bool), "must be True or False"),
    "benchmark.bandwidth_gbs": _NON_NEGATIVE,
    "benchmark.target": _one_of("", *GPUS),
    "benchmark.target_devices": _POSITIVE_INT,
    "benchmark.compiler_options": (lambda v: isinstance(v, str), "must be a string "
                                   "'name=value,name=value' of XLA options"),
    "benchmark.plan_remat": (lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                             and all(x in ("none", *REMAT_POLICIES) for x in v),
                             f"must be a non-empty tuple of {['none', *REMAT_POLICIES]}"),
}


def _lookup(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError listing every invalid field as 'config.<path>: <rule> (got <value>)'.

  Fields a config file does not define (a job-specific section it does not use) are skipped.
  """
  problems = []
  for path, (check, message) in RULES.items():
    value = _lookup(config, path)
    if value is _MISSING:
      continue
    try:
      ok = bool(check(value))
    except TypeError:
      ok = False
    if not ok:
      problems.append(f"config.{path}: {message} (got {value!r})")
  if _lookup(config, "augment") is not _MISSING:
    try:
      augment.AugmentOptions.from_config(config.augment)
    except (TypeError, ValueError) as error:
      problems.append(f"config.{error}" if str(error).startswith("augment.") else
                      f"config.augment: {error}")
  if problems:
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
