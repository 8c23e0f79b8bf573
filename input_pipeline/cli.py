"""The command-line convention of every command but the main job: absl flags, parsed privately.

Each command declares its flags with ``absl.flags`` into its own ``FlagValues`` (not the
process-wide ``FLAGS``), so commands imported into one process (the demo uses prepare,
verify and the synthetic export; tests call them all) never collide, and a command can run
twice in one process. ``--help`` lists every flag with its help text and default; a bad or
missing flag stops with its name and exit status 2. ``python -m mrp_jax.main`` (the jobs with
configs) follows the same absl conventions through ``absl.app``.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence, TypeVar

from absl import flags

T = TypeVar("T")
_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def run(program: str, doc: str, define_flags: Callable[[flags.FlagValues], None],
        main: Callable[[flags.FlagValues], T], argv: Sequence[str] | None = None) -> T:
  """Parses ``argv`` (default ``sys.argv[1:]``) into a fresh FlagValues and calls ``main``.

  Args:
    program: how users run it, e.g. 'python -m input_pipeline.prepare'.
    doc: the description printed by --help (the module docstring).
    define_flags: declares the flags, each with ``flag_values=`` the given FlagValues.
    main: the command, given the parsed flags.
  """
  values = flags.FlagValues()
  define_flags(values)
  args = list(sys.argv[1:] if argv is None else argv)
  if any(a in _HELP for a in args):
    print(f"usage: {program} [flags]\n\n{doc.strip()}\n\nflags:")
    print(values.get_help(prefix="  ", include_special_flags=False))
    sys.exit(0)
  try:
    rest = values([program, *args])
  except flags.Error as error:
    sys.exit(_usage_error(program, str(error)))
  if len(rest) > 1:
    sys.exit(_usage_error(program, f"unexpected arguments: {rest[1:]}"))
  return main(values)


def _usage_error(program: str, message: str) -> int:
  print(f"{program}: error: {message}\n(see {program} --help)", file=sys.stderr)
  return 2
