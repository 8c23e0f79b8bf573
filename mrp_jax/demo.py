"""The `demo` job: the whole system on a synthetic cohort, resumable at every stage.

Stages (each skipped or resumed when its output already exists):
  1. export:   a synthetic hospital export (input_pipeline/synthetic/) in WORKDIR/export;
  2. records:  `prepare` into WORKDIR/records (restartable shard by shard; a finished manifest
               is reused without rescanning the export), then `verify`;
  3. train:    rhpc, iMGrhpc and iMRrhpc in WORKDIR/runs/<model> (each resumes from its
               checkpoints; a run with final.json is done). The fused models start their rhpc
               encoder from the rhpc run (config.demo.rhpc_init); with
               config.demo.pretrain.steps > 0, iMGrhpc starts its image encoder from a
               pretrain run on the records' mammograms (no labels), in
               WORKDIR/runs/pretrain_iMGrhpc (docs/pretraining.md);
  4. evaluate: the MRP ensemble and the report in WORKDIR/report (the evaluate job), then the
               paper's result checked claim by claim (metrics.json "paper_claims").
With config.demo.ablation ('no_knowledge' or 'no_time'), stages 3-4 train the fused models
without that part into WORKDIR/<ablation>/runs and report into WORKDIR/<ablation>/report,
reusing the export, the records and the rhpc run of stages 1-3.

The wall time of each stage is kept in WORKDIR/timings.json and closes the console summary
(:class:`StageClock`; an ablation's stages are named with it); a stage reused from an earlier
run keeps that run's time, marked reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from input_pipeline import records, synthetic
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion.mammogram import MammogramOptions
from input_pipeline.ingestion.mri import MriOptions
from input_pipeline.records import accounting, prepare, pseudonyms, verify
from input_pipeline.synthetic import oracle
from mrp_jax import configuration, console, models
from mrp_jax.training import checks as train_checks

MODELS = ("rhpc", "iMGrhpc", "iMRrhpc")  # trained in this order (the fused ones start from rhpc)
# The paper's ablations of the fused models: configs/common.py variants of these names.
ABLATIONS = ("no_knowledge", "no_time")
TIMINGS_FILE = "timings.json"

# config.demo; the rest of the demo's config is checked as the train job checks it (each
# stage's own config is checked again before the stage runs).
CONFIG_RULES: dict[str, configuration.Rule] = {
    "demo.patients": (lambda v: configuration.positive_int(v) and v >= 12,
                      ("must be an integer >= 12 (the first 11 synthetic patients are the "
                       "unusual encodings and broken cases)")),
    "demo.geometry": configuration.one_of(*GEOMETRIES),
    "demo.workers": configuration.POSITIVE_INT,
    "demo.shard_size": configuration.POSITIVE_INT,
    "demo.split_fractions": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(
        isinstance(x, (int, float)) and x >= 0 for x in v) and v[0] > 0 and v[1] > 0
                             and abs(sum(v) - 1) < 1e-6,
                             ("must be 3 fractions (train, validation, test) summing to 1, "
                              "train and validation > 0")),
    **{f"demo.train.{m}.{k}": configuration.POSITIVE_INT for m in models.MODEL_NAMES
       for k in ("steps", "batch_size")},
    **{f"demo.train.{m}.learning_rate": configuration.POSITIVE for m in models.MODEL_NAMES},
    "demo.pretrain.steps": (configuration.COUNT[0], "must be an integer >= 0 (0: no pretraining)"),
    "demo.pretrain.batch_size": configuration.POSITIVE_INT,
    "demo.ablation": configuration.one_of("", *ABLATIONS),
    "demo.mri_layout": configuration.one_of("", *models.LAYOUTS),
}
CONFIG_CHECKS: tuple[configuration.Check, ...] = (*train_checks.CONFIG_CHECKS, CONFIG_RULES)


def train_config(config: ml_collections.ConfigDict, model_name: str, records: Path,
                 rhpc_run: Path | None, encoder_run: Path | None = None
                 ) -> ml_collections.ConfigDict:
  """The train config of one demo model: its config file (variant tiny) at the demo's
  geometry, with the model's steps, batch size and learning rate from ``config.demo.train``
  and iMRrhpc's encoder layout from ``config.demo.mri_layout`` when set; a fused model's image
  encoder starts from ``encoder_run`` (a pretrain workdir) when given."""
  demo = config.demo
  ablation = demo.ablation if model_name != "rhpc" else ""
  variants = ",".join(filter(None, ("tiny", ablation)))
  out = configuration.load(f"{demo.configs[model_name]}:{variants}")
  out.seed = config.seed
  out.data.records = str(records)
  out.data.geometry = demo.geometry
  settings = demo.train[model_name]
  out.train.num_steps = settings.steps
  out.train.batch_size = settings.batch_size
  out.train.learning_rate = settings.learning_rate
  if model_name == "iMRrhpc" and demo.mri_layout:
    out.model.encoder.layout = demo.mri_layout
  out.train.warmup_steps = max(1, settings.steps // 15)
  out.train.log_every_steps = max(1, settings.steps // 6)
  out.train.eval_every_steps = max(1, settings.steps // 3)
  out.train.checkpoint_every_steps = max(1, settings.steps // 3)
  if model_name != "rhpc":
    out.model.modality_dropout = config.model.modality_dropout
    if rhpc_run is not None and demo.rhpc_init:
      out.model.rhpc_init = str(rhpc_run)
    if encoder_run is not None:
      out.model.encoder_init = str(encoder_run)
  return out


def pretrain_config(config: ml_collections.ConfigDict, records: Path
                    ) -> ml_collections.ConfigDict:
  """The pretrain config of the demo's mammogram encoder: configs/pretrain.py (variant tiny) at
  the demo's geometry, with ``config.demo.pretrain``'s steps and batch size."""
  demo = config.demo
  out = configuration.load(f"{demo.configs.pretrain}:tiny")
  out.seed = config.seed
  out.data.records = str(records)
  out.data.geometry = demo.geometry  # what the records were prepared with (checked against them)
  out.train.num_steps = demo.pretrain.steps
  out.train.batch_size = demo.pretrain.batch_size
  out.train.warmup_steps = max(1, demo.pretrain.steps // 40)
  out.train.log_every_steps = max(1, demo.pretrain.steps // 20)
  out.train.checkpoint_every_steps = max(1, demo.pretrain.steps // 4)
  return out


def evaluate_config(config: ml_collections.ConfigDict, records: Path,
                    workdirs: dict[str, Path]) -> ml_collections.ConfigDict:
  out = configuration.load(config.demo.configs.evaluate)
  out.seed = config.seed
  out.data.records = str(records)
  out.evaluate.runs = ",".join(f"{label}={path}" for label, path in workdirs.items())
  for key, value in config.demo.evaluate.items():
    out.evaluate[key] = value
  out.evaluate.batch_size = config.validation.batch_size
  return out


class StageClock:
  """The wall time of each stage of a demo run, in WORKDIR/timings.json.

  The file holds stage names and seconds only: ``{"stages": {name: {"seconds": s,
  "reused": bool}}, "total_seconds": s}``. A stage this run reuses keeps the seconds an earlier
  run recorded (null when none did), marked reused; the total counts the stages this run ran.
  """

  def __init__(self, workdir: Path):
    self.path = workdir / TIMINGS_FILE
    self._earlier = (json.loads(self.path.read_text()).get("stages", {})
                     if self.path.exists() else {})
    self.stages: dict[str, dict] = {}

  @contextlib.contextmanager
  def time(self, name: str) -> Iterator[None]:
    """Times the stage run inside the block (kept only when it completes)."""
    start = time.perf_counter()
    yield
    self.stages[name] = {"seconds": round(time.perf_counter() - start, 3), "reused": False}
    self._write()

  def reused(self, name: str) -> None:
    """A stage whose output an earlier run wrote."""
    self.stages[name] = {"seconds": self._earlier.get(name, {}).get("seconds"), "reused": True}
    self._write()

  def total(self) -> float:
    return round(sum(v["seconds"] for v in self.stages.values() if not v["reused"]), 3)

  def _write(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.path.write_text(json.dumps({"stages": self.stages, "total_seconds": self.total()},
                                    indent=1) + "\n")

  def summary(self) -> str:
    """One line: each stage's seconds, in the order they ran."""
    parts = []
    for name, value in self.stages.items():
      seconds = "?" if value["seconds"] is None else f"{value['seconds']:.0f} s"
      parts.append(f"{name} {seconds}" + (" (reused)" if value["reused"] else ""))
    return f"stage wall times: {', '.join(parts)}; this run {self.total():.0f} s ({self.path})"


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> list[str]:
  """Runs (or resumes) every stage; returns the closing summary's lines (main.py prints them)."""
  from mrp_jax.evaluation import evaluate, outputs, report
  from mrp_jax.training import pretrain, train

  stage = console.current("demo").stage
  workdir = Path(workdir)
  clock = StageClock(workdir)
  demo = config.demo
  export = workdir / "export"
  if (export / synthetic.TRUTH_FILE).exists():
    stage(f"export: reusing {export}")
    clock.reused("export")
  else:
    stage(f"export: generating {demo.patients} synthetic patients ({demo.geometry} "
          f"geometry) in {export}")
    with clock.time("export"):
      summary = synthetic.generate_export(export, demo.patients, seed=config.seed,
                                          geometry=demo.geometry, workers=demo.workers)
    stage(f"export: {summary}")

  geometry = GEOMETRIES[demo.geometry]
  # The demo's patients are synthetic, so its pseudonym key may be public: derived from the
  # seed, the same command gives the same pseudonyms and so the same bytes everywhere after.
  # (Real data keeps prepare's random, secret key.)
  key_path = workdir / "records.pseudonym.key"
  if not key_path.exists():
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(hashlib.sha256(f"mrp-jax demo, seed {config.seed}".encode()).hexdigest())
  options = prepare.PrepareOptions(
      source=export, out=workdir / "records",
      mri=MriOptions(spacing_mm=geometry.mri_spacing_mm, box=geometry.mri_box),
      mammogram=MammogramOptions(size=geometry.mg_size), seed=config.seed,
      shard_size=demo.shard_size, workers=demo.workers,
      split_fractions=tuple(demo.split_fractions), pseudonym_key=key_path)
  manifest_path = options.out / records.MANIFEST
  if manifest_path.exists():  # prepare writes the manifest last, once every shard is complete
    stage(f"records: reusing {options.out}")
    clock.reused("scan + prepare")
  else:
    stage(f"records: preparing {options.out}")
    with clock.time("scan + prepare"):
      manifest = prepare.prepare(options)
    stage(f"records in {options.out}\n{accounting.summary(manifest)}")
  with clock.time("verify"):
    if oracle.read(options.out) is None:  # the synthetic truth, keyed by pseudonym
      key = prepare.load_key(key_path)
      oracle.write_for_records(export, options.out,
                               lambda source: pseudonyms.pseudonym(key, source))
    verified = verify.verify_directory(options.out)
  if not verified.ok:
    raise RuntimeError(f"demo: the prepared records failed verification:\n{verified.summary()}")
  stage(f"verify: {verified.summary()}")

  encoder_run = None
  if demo.pretrain.steps:
    encoder_run = workdir / "runs" / "pretrain_iMGrhpc"
    cfg = pretrain_config(config, options.out)
    configuration.validate(cfg, pretrain.CONFIG_CHECKS)
    if (encoder_run / pretrain.ENCODER_INFO).exists():
      clock.reused("pretrain iMGrhpc")
      pretrain.pretrain(cfg, encoder_run)  # says "done before"
    else:
      with clock.time("pretrain iMGrhpc"):
        pretrain.pretrain(cfg, encoder_run)

  # An ablation's fused runs and report live in WORKDIR/<ablation>, beside the full models';
  # its rhpc (which has neither part) is the full models' own.
  variant_dir = workdir / demo.ablation if demo.ablation else workdir
  suffix = f" ({demo.ablation})" if demo.ablation else ""  # an ablation's stage names
  workdirs: dict[str, Path] = {}
  for model_name in MODELS:
    run_dir = workdirs[model_name] = (workdir if model_name == "rhpc" else variant_dir
                                      ) / "runs" / model_name
    if (run_dir / "final.json").exists():
      stage(f"train {model_name}: done before, reusing {run_dir}")
      clock.reused(f"train {model_name}" + (suffix if model_name != "rhpc" else ""))
      continue
    cfg = train_config(config, model_name, options.out, workdirs.get("rhpc"),
                       encoder_run if model_name == "iMGrhpc" else None)
    configuration.validate(cfg, train_checks.CONFIG_CHECKS)
    with clock.time(f"train {model_name}" + (suffix if model_name != "rhpc" else "")):
      train.train_and_evaluate(cfg, run_dir)

  report_dir = variant_dir / "report"
  if (report_dir / "report.md").exists():
    stage(f"evaluate: done before, see {report_dir / 'report.md'}")
    clock.reused(f"evaluate{suffix}")
    result = json.loads((report_dir / "metrics.json").read_text())
  else:
    stage(f"evaluate: MRP ensemble, metrics with {demo.evaluate.bootstrap_replicates} "
          f"bootstrap replicates, explanations -> {report_dir}")
    cfg = evaluate_config(config, options.out, workdirs)
    configuration.validate(cfg, evaluate.CONFIG_CHECKS)
    with clock.time(f"evaluate{suffix}"):
      result = evaluate.run(cfg, variant_dir)
  if result.get("paper_claims"):  # absent in reports of older versions
    stage(report.claims_summary(result["paper_claims"], result.get("oracle_gaps", {}),
                                result.get("image_evidence", {})))
  return [*outputs.summary(report_dir),
          f"training curves of the {len(MODELS)} models: tensorboard --logdir "
          f"{variant_dir / 'runs'} (pip install tensorboard)",
          f"records: {options.out}; synthetic export: {export}",
          "run the same command again to resume or to reprint this",
          clock.summary()]
