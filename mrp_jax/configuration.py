"""Config files: loading them as the command line does, and checking them before any work.

Every problem is reported with its field's full name. Unknown fields are already refused by the
locked ConfigDict (config_flags); the checks here refuse known fields with values the code
cannot honour.

A check is declared where the code that reads its section lives, as :data:`Rules` (field path
-> (test, what the value must be)) or, where a section's own constructor knows best, as a
function returning its problems. Each job module gathers the checks of what it runs in
``CONFIG_CHECKS`` (mrp_jax/main.py's job table reads them), so checking a config loads only the
job's own modules. This module holds the machinery, the rule builders and the fields every job
shares.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """One or more config fields hold values that cannot work."""


Rule = tuple[Callable[[Any], bool], str]  # (test of the value, what the value must be)
Rules = Mapping[str, Rule]  # 'section.field' -> its rule
# A table of rules, or a function returning 'config.<path>: ...' problems.
Check = Rules | Callable[[ml_collections.ConfigDict], list[str]]


def missing_file(path: str) -> str:
  """One line for a config file that does not exist: the path, the nearest name and the config
  files of its folder."""
  folder = Path(path).parent
  if not folder.is_dir():
    return f"no config file {path!r}: no folder {str(folder)!r} (run from the repository root?)"
  names = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
  near = difflib.get_close_matches(Path(path).name, names, n=1)
  return (f"no config file {path!r}" + (f"; did you mean {folder / near[0]}?" if near else "")
          + (f" (config files in {folder}: {', '.join(names)})" if names else ""))


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of ``'path/to/file.py[:variants]'``, as ``--config`` would give it.

  The file is imported by path and its ``get_config(variants)`` called (``get_config()``
  without variants), as ml_collections' config_flags does; the result is locked, so a misspelt
  field is an error here too.
  """
  path, _, arg = spec.partition(":")
  if not Path(path).is_file():
    raise ConfigError(missing_file(path))
  module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config


# ---- rule builders --------------------------------------------------------------------------
def positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def one_of(*choices) -> Rule:
  return (lambda v: v in choices), f"must be one of {list(choices)}"


def tuple_of(*choices) -> Rule:
  """A non-empty tuple (or list) of some of ``choices``."""
  return ((lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(x in choices for x in v)),
          f"must be a non-empty tuple of {list(choices)}")


def ints(n: int | None) -> Rule:
  def check(v):
    return (isinstance(v, (tuple, list)) and (n is None or len(v) == n)
            and all(positive_int(x) for x in v))
  return check, f"must be a tuple of {n or 'some'} positive integers"


def optional(rule: Rule) -> Rule:
  """``rule``, or None for the encoder layout's own value."""
  check, message = rule
  return (lambda v: v is None or check(v)), f"{message} (or None for the layout's)"


def is_probability(v) -> bool:
  try:
    return 0 < float(v) < 1
  except (TypeError, ValueError):
    return False


BOOLEAN: Rule = (lambda v: isinstance(v, bool), "must be True or False")
POSITIVE_INT: Rule = (positive_int, "must be a positive integer")
COUNT: Rule = (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
NON_NEGATIVE: Rule = (lambda v: isinstance(v, (int, float)) and v >= 0, "must be >= 0")
POSITIVE: Rule = (lambda v: isinstance(v, (int, float)) and v > 0, "must be > 0")
UNIT_INTERVAL: Rule = (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "must be in [0, 1)")
OPTIONAL_FILE: Rule = (lambda v: v == "" or os.path.isfile(v), "must be '' or an existing file")
STRING: Rule = (lambda v: isinstance(v, str), "must be a string")

# The fields main.py reads for every job.
RULES: dict[str, Rule] = {
    "seed": (lambda v: isinstance(v, int), "must be an integer"),
    "deterministic_gpu": BOOLEAN,
    "distributed": BOOLEAN,
    "data.records": (lambda v: isinstance(v, str), "must be a folder path (a string)"),
}


# ---- checking -------------------------------------------------------------------------------
MISSING = object()


def lookup(config: ml_collections.ConfigDict, path: str) -> Any:
  """The value at the dotted ``path``, or :data:`MISSING` where the config has no such field."""
  node = config
  for part in path.split("."):
    if part not in node:
      return MISSING
    node = node[part]
  return node


def _rule_problems(config: ml_collections.ConfigDict, rules: Rules) -> list[str]:
  problems = []
  for path, (check, message) in rules.items():
    value = lookup(config, path)
    if value is MISSING:  # a section this config file does not define
      continue
    try:
      ok = bool(check(value))
    except TypeError:
      ok = False
    if not ok:
      problems.append(f"config.{path}: {message} (got {value!r})")
  return problems


def problems(config: ml_collections.ConfigDict, checks: Iterable[Check]) -> list[str]:
  """Every problem the checks find, each 'config.<path>: <what it must be> (got <value>)'.

  Fields a config file does not define (a section of another job) are skipped.
  """
  found: list[str] = []
  for check in checks:
    found += check(config) if callable(check) else _rule_problems(config, check)
  return list(dict.fromkeys(found))  # a rule two checks share is reported once


def validate(config: ml_collections.ConfigDict, checks: Iterable[Check]) -> None:
  """Raises ConfigError listing every invalid field the checks find."""
  found = problems(config, checks)
  if found:
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(found))
