"""Command-line conventions shared by every command: flags and progress bars.

Flags: every command declares its flags with ``absl.flags`` in a ``define_flags(flag_values)``
function and does its work in ``command(flag_values, arguments) -> exit status``.

* As a program (``python -m input_pipeline.records.prepare ...``), :func:`run_program` defines the
  flags on absl's global FLAGS and runs ``absl.app``: ``--help`` lists every flag with its help
  text and default, a bad or missing flag stops with its name.
* From Python (tests, the demo), :func:`call` parses ``argv`` into a fresh ``FlagValues``, so
  commands imported into one process never collide and can run many times; a bad flag is
  reported on stderr and returned as exit status 2.

``python -m mrp_jax.main`` (the jobs with configs) follows the same absl conventions.

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
from absl import app, flags

T = TypeVar("T")
Command = Callable[[flags.FlagValues, Sequence[str]], int]


def call(program: str, define_flags: Callable[[flags.FlagValues], None], command: Command,
         argv: Sequence[str]) -> int:
  """Runs a command from Python: ``argv`` without the program name; returns the exit status."""
  values = flags.FlagValues()
  define_flags(values)
  try:
    arguments = values([program, *argv])[1:]
  except flags.Error as error:
    print(f"{program}: {error}", file=sys.stderr)
    return 2
  return command(values, arguments)


def run_program(define_flags: Callable[[flags.FlagValues], None], command: Command) -> None:
  """Runs a command as a program (the ``__main__`` block): absl's app on the global flags."""
  before = set(flags.FLAGS)
  define_flags(flags.FLAGS)
  for name in sorted(set(flags.FLAGS) - before):  # --help lists the program's key flags
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(lambda argv: command(flags.FLAGS, argv[1:]))


class _PlainLines(io.TextIOBase):
  """A text stream for tqdm off a terminal: each refresh (tqdm starts them with a carriage
  return) becomes its own line; cursor movements, empty refreshes and a refresh that repeats
  the previous line (a periodic one just before the closing one) are dropped, and so is
  everything written while ``quiet``."""
  _CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

  def __init__(self, stream: TextIO, quiet: bool = False):
    super().__init__()
    self._stream = stream
    self._last = ""
    self.quiet = quiet

  def write(self, text: str) -> int:
    for line in re.split(r"[\r\n]", self._CONTROL.sub("", text)):
      line = line.rstrip()
      if line.strip() and line != self._last and not self.quiet:
        self._stream.write(line + "\n")
        self._last = line
    self._stream.flush()
    return len(text)

  def flush(self) -> None:
    self._stream.flush()


_PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}{postfix}"
_PLAIN_COUNT = "{desc}: {n_fmt} {unit} in {elapsed}{postfix}"  # no total known


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", initial: int = 0, enabled: bool = True, interval: float = 30.0,
             stream: TextIO | None = None) -> Any:
  """A tqdm progress bar on stdout (``enabled=False``: silent, same interface).

  On a terminal it redraws in place. Elsewhere (a pipe, a file, a CI or SLURM log) it prints a
  plain line every ``interval`` seconds and one when it closes, with no control characters
  (the stage that starts it says what starts, so no line at 0%). ``initial``: work already
  done (a resumed run). ``bar.set_postfix_str(text, refresh=False)`` adds live figures (a loss)
  to the next line without printing one now.
  """
  stream = sys.stdout if stream is None else stream
  if stream.isatty():
    return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                     disable=not enabled, leave=True, file=stream, dynamic_ncols=True,
                     mininterval=0.1, maxinterval=interval)
  counted = total is not None or hasattr(iterable, "__len__")
  plain = _PlainLines(stream, quiet=True)  # tqdm draws the bar once as it is made
  # miniters=1: a line at the first update `interval` seconds after the last one, whatever the
  # rate. (tqdm's default sets the updates between lines from the early rate, so a stage that
  # slows down goes quiet; its monitor thread, which makes up for that, printed each burst of a
  # process pool's results as two lines.)
  bar = tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial,
                  disable=not enabled, leave=True, file=plain, mininterval=interval,
                  maxinterval=interval, miniters=1,
                  bar_format=_PLAIN_FORMAT if counted else _PLAIN_COUNT)
  plain.quiet = False
  return bar
