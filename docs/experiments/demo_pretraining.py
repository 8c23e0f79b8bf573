"""What the demo's pretraining buys on the demo's own cohort (docs/pretraining.md, "What the demo
does now").

An experiment, not part of the package. Command (from the repository root, after a finished
demo in runs/demo; ~8 minutes per condition with pretraining on 2 shared cores, ~4 without):
  python docs/experiments/demo_pretraining.py --demo runs/demo --out /tmp/demo_pretraining \
      --name pretrained --pretrain_steps 2000
  python docs/experiments/demo_pretraining.py --demo runs/demo --out /tmp/demo_pretraining \
      --name scratch
  python docs/experiments/demo_pretraining.py --demo runs/demo --out /tmp/demo_pretraining \
      --name frozen --encoder /tmp/demo_pretraining/pretrained/pretrain --encoder_lr_scale 0
A demo run with `--config.seed=N` needs `--seed N` to train as it did; another seed draws a
new start on the same records (docs/experiments.md, "The demo's size"):
  python docs/experiments/demo_pretraining.py --demo runs/demo_seed1 --name init0 --seed 0
After the paper-scale run (configs/demo.py:paper in runs/paper), its iMGrhpc from scratch:
  python docs/experiments/demo_pretraining.py --demo runs/paper --variants paper \
      --out /tmp/paper_pretraining --name scratch

Each condition pretrains the mammogram encoder as the demo does (``demo.pretrain_config``:
configs/pretrain.py:tiny on every split's mammograms; ``--pretrain_steps 0``: none), or takes
a finished pretrain run (``--encoder``), then trains iMGrhpc as the demo does
(``demo.train_config``: 200 steps of 16, started from the demo's rhpc run) and predicts the
test split at each phase from its kept (best) checkpoint. Printed: times (wall, process CPU,
load average), the test AUROC of the fused output per phase and of the knowledge predictor's
image-only output (over patients with a mammogram: the report's "image_evidence"), and with
``--probe`` a linear probe of the pretrained encoder's frozen pooled features (logistic
regression on the training split, AUROC on validation and test). The demo's records, rhpc
run and report are only read.
"""

import json
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from input_pipeline import records
from input_pipeline.feed import batching, pipeline
from input_pipeline.records import tfrecord
from mrp_jax import configuration, demo, models
from mrp_jax.core import augment, inference, runs, sharding
from mrp_jax.evaluation import statistics
from mrp_jax.models.resnet import ResNet
from mrp_jax.training import checks as train_checks
from mrp_jax.training import pretrain, train

flags.DEFINE_string("demo", "runs/demo", "Workdir of a finished demo (records, runs/rhpc).")
flags.DEFINE_string("out", "/tmp/demo_pretraining", "Where each condition's runs go.")
flags.DEFINE_string("name", "pretrained", "The condition's folder under --out.")
flags.DEFINE_string("variants", "", "configs/demo.py variants the demo ran with (e.g. 'paper').")
flags.DEFINE_integer("pretrain_steps", 0, "Pretraining steps (0: none).")
flags.DEFINE_integer("pretrain_batch", 64, "Pretraining batch (images).")
flags.DEFINE_float("pretrain_learning_rate", None, "Pretraining peak rate (default: config's).")
flags.DEFINE_float("crop_min_area", None, "config.pretrain.crop_min_area (default: config's).")
flags.DEFINE_string("encoder", "", "A finished pretrain run to start from instead.")
flags.DEFINE_float("encoder_lr_scale", None, "train.encoder_learning_rate_scale for iMGrhpc.")
flags.DEFINE_bool("probe", False, "Also a linear probe of the pretrained encoder.")
flags.DEFINE_integer("seed", None, "config.seed of the runs here (default: configs/demo.py's, "
                     "0), e.g. the seed of --demo's run, or another to draw a new "
                     "initialisation and data order on the same records.")
FLAGS = flags.FLAGS


def _clock() -> tuple[float, float, float]:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  load = float(Path("/proc/loadavg").read_text().split()[0])
  return time.perf_counter(), usage.ru_utime + usage.ru_stime, load


def _since(start: tuple[float, float, float]) -> dict[str, float]:
  end = _clock()
  return {"wall_s": round(end[0] - start[0], 1), "cpu_s": round(end[1] - start[1], 1),
          "load": round((start[2] + end[2]) / 2, 1)}


def _probe(config, encoder_run: Path, records_dir: Path) -> dict[str, list[float]]:
  """Validation and test AUROC of logistic regressions (C 0.01, 0.1, 1) on frozen features."""
  with ocp.StandardCheckpointer() as reader:
    variables = reader.restore(encoder_run.resolve() / pretrain.ENCODER_DIR)
  net = ResNet(**models.encoder_kwargs(config.model.encoder, 2, config.model.dtype))
  spec = pipeline.batch_spec(records_dir)
  data = {}
  for split in ("train", "validation", "test"):
    decoded = [records.decode(d) for path in pipeline.split_paths(records_dir, split)
               for _, d in tfrecord.iter_records(path)]
    labelled = [r for r in decoded if r.mg is not None and r.label in (0, 1)]
    batch = batching.collate([batching.Example(r, None, None) for r in labelled], "iMGrhpc", spec)
    images = augment.prepare_images(jax.tree.map(jnp.asarray, batch))["mg"][:, 0]
    data[split] = (np.asarray(net.apply(variables, images[..., None], train=False)),
                   np.asarray([r.label for r in labelled]))
  x, y = data["train"]
  mean, sd = x.mean(0), x.std(0) + 1e-6
  out = {}
  for c in (0.01, 0.1, 1.0):
    fit = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / sd, y)
    out[f"C={c}"] = [round(roc_auc_score(data[s][1], fit.decision_function(
        (data[s][0] - mean) / sd)), 3) for s in ("validation", "test")]
  return out


def main(argv):
  del argv
  demo_dir, out = Path(FLAGS.demo), Path(FLAGS.out) / FLAGS.name
  records_dir = demo_dir / "records"
  out.mkdir(parents=True, exist_ok=True)
  config = configuration.load("configs/demo.py" + (f":{FLAGS.variants}" if FLAGS.variants else ""))
  if FLAGS.seed is not None:
    config.seed = FLAGS.seed
  config.demo.pretrain.steps = max(FLAGS.pretrain_steps, 1)
  config.demo.pretrain.batch_size = FLAGS.pretrain_batch
  pretrain_config = demo.pretrain_config(config, records_dir)
  if FLAGS.pretrain_learning_rate:
    pretrain_config.train.learning_rate = FLAGS.pretrain_learning_rate
  if FLAGS.crop_min_area:
    pretrain_config.pretrain.crop_min_area = FLAGS.crop_min_area
  result: dict = {"condition": FLAGS.name}
  encoder_run = Path(FLAGS.encoder) if FLAGS.encoder else None
  if FLAGS.pretrain_steps:
    configuration.validate(pretrain_config, pretrain.CONFIG_CHECKS)
    encoder_run = out / "pretrain"
    start = _clock()
    pretrain.pretrain(pretrain_config, encoder_run)
    result["pretrain"] = _since(start)
  if encoder_run is not None and FLAGS.probe:
    result["probe_validation_test"] = _probe(pretrain_config, encoder_run, records_dir)
  train_config = demo.train_config(config, "iMGrhpc", records_dir, demo_dir / "runs" / "rhpc",
                                   encoder_run)
  if FLAGS.encoder_lr_scale is not None:
    train_config.train.encoder_learning_rate_scale = FLAGS.encoder_lr_scale
  configuration.validate(train_config, train_checks.CONFIG_CHECKS)
  start = _clock()
  train.train_and_evaluate(train_config, out / "iMGrhpc")
  result["train"] = _since(start)
  mesh = sharding.make_mesh()
  run = runs.load_run(out / "iMGrhpc", mesh)
  paths = pipeline.split_paths(records_dir, "test")
  for phase in ("pre", "mid", "post"):
    p = inference.predict(run.eval_step, run.state, mesh, paths, model_name="iMGrhpc",
                          phase=phase, batch_size=8)
    result[f"test {phase}"] = {
        "n": len(p.label), "fused_auroc": round(statistics.auroc(p.label, p.probability), 4),
        "image_only_auroc": round(statistics.auroc(p.label[p.image_present],
                                                   p.image_probability[p.image_present]), 4)}
  report = demo_dir / "report" / "metrics.json"
  if report.exists():
    rows = json.loads(report.read_text()).get("image_evidence", {}).get("pre", [])
    result["oracle_image_evidence"] = [round(r["auroc_oracle_evidence"], 4) for r in rows
                                       if r["model"] == "iMGrhpc" and "auroc_oracle_evidence" in r]
  print(json.dumps(result, indent=1))
  (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
