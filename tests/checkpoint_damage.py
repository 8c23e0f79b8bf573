"""Damage to an Orbax checkpoint step, for the tests that check it is caught (test_checkpoint,
test_predict)."""

import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


def flat(tree) -> dict[str, np.ndarray]:
  """path -> array, paths as a restored dict names them ("['params']['classifier']['kernel']"
  also for the train state's fields, ".params['classifier']['kernel']")."""
  return {re.sub(r"\.(\w+)", r"['\1']", jax.tree_util.keystr(k)): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def stored_arrays(step_dir) -> dict[str, np.ndarray]:
  """Every array of a step's state, read without any check (the reference bytes)."""
  with ocp.StandardCheckpointer() as reader:
    return flat(reader.restore(Path(step_dir).resolve() / "state"))


def data_file(step_dir) -> Path:
  """The largest data file of a step's state (it holds array bytes)."""
  return max((p for p in (Path(step_dir) / "state").rglob("*") if p.parent.name == "d"),
             key=lambda p: p.stat().st_size)


def flip_state_byte(step_dir) -> None:
  """Flips one bit of one stored array. The data file holds more than the arrays' bytes (zstd
  frame headers, where a flip makes the state unreadable; bytes no read touches, where it goes
  unnoticed) and their order can change from run to run, so the flip is tried from the file's
  middle on and kept at the first place where reading the state back without any check gives
  exactly one array changed."""
  before = stored_arrays(step_dir)
  path = data_file(step_dir)
  original = path.read_bytes()
  for fraction in (*np.linspace(0.5, 0.95, 10), *np.linspace(0.05, 0.45, 9)):
    data = bytearray(original)
    data[int(len(data) * fraction)] ^= 0x01
    path.write_bytes(bytes(data))
    try:
      after = stored_arrays(step_dir)
    except Exception:  # noqa: BLE001, S112 (unreadable: not the damage wanted here)
      continue
    if sum(not np.array_equal(before[k], after[k]) for k in before) == 1:
      return
  path.write_bytes(original)
  raise AssertionError(f"{step_dir}: no single-array flip found")
