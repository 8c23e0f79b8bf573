"""`python -m mrp_jax.main` that SIGKILLs itself at one instant of checkpointing step STEP.

  python tests/killed_run.py WHEN STEP MAIN_ARGS...

WHEN:
  best-commit    while best/STEP is written (its digest is on disk, the step not committed);
  between        best/STEP committed, checkpoints/STEP not begun;
  latest-commit  while checkpoints/STEP is written (its digest is on disk, the step not
                 committed; Orbax commits it asynchronously).

The kill is the process's own SIGKILL at that point of the code, not a timer: the test knows the
exact state it leaves.
"""

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
  when, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
  import orbax.checkpoint as ocp

  from mrp_jax.core import checkpoint

  if when == "between":
    save_best = checkpoint.Checkpoints.save_best

    def killing_save_best(self, at, *rest, **kwargs):
      save_best(self, at, *rest, **kwargs)
      if at == step:
        _die()

    checkpoint.Checkpoints.save_best = killing_save_best
  else:
    folder = {"best-commit": "best", "latest-commit": "checkpoints"}[when]
    save_fn = ocp.JsonCheckpointHandler._save_fn

    async def killing_save_fn(self, item, directory):
      await save_fn(self, item, directory)
      directory = Path(directory)
      # .../<folder>/<step>.orbax-checkpoint-tmp/digest.orbax-checkpoint-tmp
      if (directory.name.split(".")[0] == checkpoint.DIGEST
          and directory.parent.name == f"{step}.orbax-checkpoint-tmp"
          and directory.parent.parent.name == folder):
        _die()

    ocp.JsonCheckpointHandler._save_fn = killing_save_fn
  sys.argv = [sys.argv[0], *args]
  from mrp_jax import main as program
  program.run()


if __name__ == "__main__":
  main()
