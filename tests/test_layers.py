"""The package's layers import one way (docs/design.md, "Layers"):

  configs         plain ml_collections data; imports nothing from the project
  input_pipeline  the data layer (schema, ingestion, records, batches, synthetic data);
                  imports nothing from mrp_jax or configs
  mrp_jax         models, training, evaluation, benchmark, predict; imports input_pipeline,
                  never configs (config files are loaded by path, as the command line does)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "configs": ("mrp_jax", "input_pipeline"),
    "input_pipeline": ("mrp_jax", "configs"),
    "mrp_jax": ("configs",),
}


def _imports(path: Path) -> set[str]:
  """Top-level package of every absolute import in a file (any depth: function-level too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.add(node.module.split(".")[0])
  return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layers(package):
  files = sorted((ROOT / package).rglob("*.py"))
  assert files
  wrong = {str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN[package]))
           for path in files}
  assert not {k: v for k, v in wrong.items() if v}, "imports against the layers"


def test_subpackages_show_the_jobs():
  """At most ~8 modules at the top of mrp_jax; the rest grouped by job."""
  top = sorted(p.stem for p in (ROOT / "mrp_jax").glob("*.py") if p.stem != "__init__")
  assert len(top) <= 8, top
  for folder in ("models", "training", "evaluation", "benchmark"):
    assert (ROOT / "mrp_jax" / folder / "__init__.py").is_file(), folder


def test_modules_stay_readable():
  """No package module over 500 lines; input_pipeline's top level holds at most six modules
  beside its stage subpackages (ingestion, records, feed, synthetic)."""
  long = {str(p.relative_to(ROOT)): n for package in ("mrp_jax", "input_pipeline", "configs")
          for p in (ROOT / package).rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 500}
  assert not long, f"split these modules: {long}"
  top = sorted(p.stem for p in (ROOT / "input_pipeline").glob("*.py") if p.stem != "__init__")
  assert len(top) <= 6, top
  for stage in ("ingestion", "records", "feed", "synthetic"):
    assert (ROOT / "input_pipeline" / stage / "__init__.py").is_file(), stage
