"""The train job's config checks: the fields the training loop reads (config.train's schedule
of logs, validations and checkpoints, config.validation, config.data's feed) beside those of
the state it trains (mrp_jax/core/state.py)."""

from __future__ import annotations

from input_pipeline import schema
from input_pipeline.geometries import GEOMETRIES
from mrp_jax import configuration as cfg
from mrp_jax.core import state
from mrp_jax.training import pretrain

# How training images reach the device (config.data.transfer; train.uses_views).
TRANSFERS = ("auto", "views", "batch")

CONFIG_RULES: dict[str, cfg.Rule] = {
    "train.batch_size": cfg.POSITIVE_INT,
    "train.log_every_steps": cfg.POSITIVE_INT,
    "train.eval_every_steps": cfg.POSITIVE_INT,
    "train.checkpoint_every_steps": cfg.POSITIVE_INT,
    "train.keep_checkpoints": cfg.POSITIVE_INT,
    "train.plateau_patience": cfg.COUNT,
    "train.plateau_factor": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
                             "must be in (0, 1]"),
    "validation.batch_size": cfg.POSITIVE_INT,
    "validation.phases": cfg.tuple_of(*schema.PHASE_NAMES),
    # A geometry preset or '': the records' manifest is the one source of the geometry, and a
    # preset that disagrees with it stops training (train._check_records).
    "data.geometry": cfg.one_of("", *GEOMETRIES),
    "data.shuffle_window": cfg.POSITIVE_INT,
    "data.workers": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                     "must be an integer >= 0 (0: read in the training process)"),
    "data.transfer": cfg.one_of(*TRANSFERS),
}

CONFIG_CHECKS: tuple[cfg.Check, ...] = (cfg.RULES, *state.CONFIG_CHECKS, CONFIG_RULES,
                                        pretrain.ENCODER_START_RULES,
                                        pretrain.best_metric_problems)
