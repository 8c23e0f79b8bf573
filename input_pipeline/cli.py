"""Command-line conventions shared by every command: flags and progress bars.

Flags (:func:`run`), for every command but the main job: absl flags, parsed privately.

Each command declares its flags with ``absl.flags`` into its own ``FlagValues`` (not the
process-wide ``FLAGS``), so commands imported into one process (the demo uses prepare,
verify and the synthetic export; tests call them all) never collide, and a command can run
twice in one process. ``--help`` lists every flag with its help text and default; a bad or
missing flag stops with its name and exit status 2. ``python -m mrp_jax.main`` (the jobs with
configs) follows the same absl conventions through ``absl.app``.

Progress (:func:`progress`): a tqdm bar on a terminal; where output is not a terminal (CI, a
pipe, a SLURM log) the same bar as a plain line every ``interval`` seconds and at the end, with
no control characters.
"""

from __future__ import annotations

import io
import re
import sys
from typing import Any, Callable, Iterable, Sequence, TextIO, TypeVar

import tqdm
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


class _PlainLines(io.TextIOBase):
  """A text stream for tqdm off a terminal: each refresh (tqdm starts them with a carriage
  return) becomes its own line; cursor movements and empty refreshes are dropped."""
  _CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

  def __init__(self, stream: TextIO):
    super().__init__()
    self._stream = stream

  def write(self, text: str) -> int:
    for line in re.split(r"[\r\n]", self._CONTROL.sub("", text)):
      if line.strip():
        self._stream.write(line.rstrip() + "\n")
    self._stream.flush()
    return len(text)

  def flush(self) -> None:
    self._stream.flush()


_PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}{postfix}"


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, interval: float = 30.0,
             stream: TextIO | None = None) -> Any:
  """A tqdm progress bar on stdout (``enabled=False``: silent, same interface).

  On a terminal it redraws in place; elsewhere it prints a plain line every ``interval``
  seconds and one when it closes. ``bar.set_postfix_str(...)`` adds live figures (a loss).
  """
  stream = sys.stdout if stream is None else stream
  terminal = stream.isatty()
  return tqdm.tqdm(
      iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=True,
      file=stream if terminal else _PlainLines(stream), dynamic_ncols=terminal,
      mininterval=0.1 if terminal else interval, maxinterval=interval,
      bar_format=None if terminal else _PLAIN_FORMAT)
