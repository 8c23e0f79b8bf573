"""Clinical tables: raw values to the schema's codes, and the pCR label.

Real tables spell categories many ways ('Invasive ductal carcinoma', 'IDC', 'ductaal'), leave
values out in many ways ('', 'n/a', 'onbekend', '?') and mix units ('62 kg', '62,5'). Every
value is normalised (case, spaces, punctuation) and looked up among the spellings that
:mod:`input_pipeline.schema` declares for its variable; anything unparseable becomes Unknown
and is counted in a :class:`ParseReport`, never raised. So does a spelling that names more
than one category (``Variable.ambiguous``: 'HER2 positive' without the ER status, 'T1' without
the substage).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from input_pipeline.schema import UNKNOWN, VARIABLES, Kind, Variable

# Values that mean "not recorded" in real tables, compared with spaces, dots, slashes and
# dashes removed ('n/a', 'N.A.', ' - ' and 'not known' all match).
_MISSING_TOKENS = frozenset({
    "", "nan", "na", "none", "null", "unknown", "unk", "missing", "notknown", "notavailable",
    "onbekend", "?", "??", "nd", "notdone", "nk", "nvt", "notapplicable", "notrecorded",
})
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
# A numeric cell: sign, number (decimal point or comma), unit ('-50', '62,5 kg', '45 y').
_NUMBER_CELL = re.compile(r"([-+\u2212]?)\s*(\d+(?:[.,]\d+)?)\s*([a-z]*)\.?")
_NEGATIVE = re.compile(r"\s*[-\u2212]\s*\d")
_UNIT_SPELLINGS = {
    "kg": {"", "kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"},
    "years": {"", "y", "yr", "yrs", "year", "years", "j", "jr", "jaar"},
}
_THERAPY_SPLIT = re.compile(r"\s*(?:[+;,/&|]|\band\b|\bwith\b|\bplus\b)\s*")


def normalise(value: Any) -> str:
  """Lower-cases, strips, and collapses whitespace, '_' and '-' so spellings compare equal."""
  if value is None:
    return ""
  if isinstance(value, float) and math.isnan(value):
    return ""
  text = str(value).strip().lower()
  text = re.sub(r"[\s_\-]+", " ", text)
  return text.strip()


def _token(text: str) -> str:
  """Alias key: normalised text without spaces or dots ('C50.4' -> 'c504', 'cT 2' -> 'ct2')."""
  return re.sub(r"[\s.]+", "", text)


def _build_alias_tables() -> dict[str, dict[str, int]]:
  tables = {}
  for var in VARIABLES:
    table: dict[str, int] = {}
    for index, cat in enumerate(var.categories):
      for spelling in (cat.name, *cat.aliases):
        key = _token(normalise(spelling))
        if table.get(key, index) != index:
          raise AssertionError(f"{var.name}: alias {spelling!r} names two categories")
        table[key] = index
    for spelling in var.ambiguous:
      if _token(normalise(spelling)) in table:
        raise AssertionError(f"{var.name}: {spelling!r} is declared ambiguous and is an alias")
    tables[var.name] = table
  return tables


_ALIASES = _build_alias_tables()


@dataclasses.dataclass
class ParseReport:
  """Counts of values that could not be parsed and became Unknown, per variable and raw value."""
  unparsed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  missing: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def note_unparsed(self, variable: str, raw: Any) -> None:
    self.unparsed[(variable, str(raw))] += 1

  def note_missing(self, variable: str) -> None:
    self.missing[variable] += 1

  def summary(self) -> dict[str, Any]:
    """A JSON-friendly summary: {'unparsed': {var: {raw: n}}, 'missing': {var: n}}."""
    unparsed: dict[str, dict[str, int]] = {}
    for (var, raw), n in sorted(self.unparsed.items()):
      unparsed.setdefault(var, {})[raw] = n
    return {"unparsed": unparsed, "missing": dict(sorted(self.missing.items()))}


def _parse_number(raw: Any, unit: str) -> float | None:
  """The number a cell holds, with its sign, or None.

  The whole cell must be one number, optionally followed by the variable's unit ('62,5 kg',
  '45 y', '-50'): a range ('45-50'), a comparison ('<50') or another unit ('150 lb') is not a
  number of this variable and is left to the category names or reported unparsed.
  """
  if isinstance(raw, (int, float, np.number)) and not isinstance(raw, bool):
    return float(raw)
  match = _NUMBER_CELL.fullmatch(str(raw).strip().lower())
  if match is None or match.group(3) not in _UNIT_SPELLINGS.get(unit, {""}):
    return None
  number = float(match.group(2).replace(",", "."))
  return -number if match.group(1) in ("-", "\u2212") else number


def parse_value(var: Variable, raw: Any,
                report: ParseReport | None = None) -> tuple[int, float]:
  """Parses one raw table value of ``var``.

  Returns:
    (code, value): code is the category index, the label bit mask (multilabel), 0 for a known
    continuous value, or ``UNKNOWN``; value is the raw number for continuous and binned
    variables (NaN if unknown or not numeric).
  """
  text = normalise(raw)
  if re.sub(r"[\s./\-]+", "", text) in _MISSING_TOKENS:
    if report is not None:
      report.note_missing(var.name)
    return UNKNOWN, math.nan

  def unparsed() -> tuple[int, float]:
    if report is not None:
      report.note_unparsed(var.name, raw)
    return UNKNOWN, math.nan

  if var.kind == Kind.CONTINUOUS or var.is_binned:
    number = None if isinstance(raw, bool) else _parse_number(raw, var.unit)
    if number is None or not math.isfinite(number):
      # A binned variable may also be written as its category name ('<=11').
      index = _ALIASES[var.name].get(_token(text))
      return (index, math.nan) if index is not None else unparsed()
    low, high = var.valid_range or (-math.inf, math.inf)
    if not low <= number <= high:
      return unparsed()
    if var.kind == Kind.CONTINUOUS:
      return 0, number
    for index, cat in enumerate(var.categories):
      if cat.bounds[0] <= number < cat.bounds[1]:
        return index, number
    return unparsed()

  if _NEGATIVE.match(str(raw)):
    # Normalising turns '-' into a space: '-2' would read as category '2'.
    return unparsed()
  table = _ALIASES[var.name]
  if var.kind == Kind.MULTILABEL:
    mask = 0
    for part in _THERAPY_SPLIT.split(text):
      if not part:
        continue
      index = table.get(_token(part))
      if index is None:
        return unparsed()
      mask |= 1 << index
    return (mask, math.nan) if mask else unparsed()

  index = table.get(_token(text))
  if index is None and _NUMBER.fullmatch(text):
    # '2.0' from a spreadsheet for category '2'.
    number = float(text.replace(",", "."))
    if number.is_integer():
      index = table.get(str(int(number)))
  return (index, math.nan) if index is not None else unparsed()


def find_columns(headers: Iterable[str]) -> dict[str, str]:
  """Maps variable name -> the header in ``headers`` that holds it (first match wins)."""
  by_normalised = {}
  for header in headers:
    by_normalised.setdefault(normalise(header), header)
  found = {}
  for var in VARIABLES:
    for candidate in (var.name.replace("_", " "), *var.columns):
      if candidate in by_normalised:
        found[var.name] = by_normalised[candidate]
        break
  return found


# --------------------------------------------------------------------------------------------
# A table's headers
# --------------------------------------------------------------------------------------------
class ColumnError(ValueError):
  """A clinical table's headers cannot be read with certainty; the message names each header
  and says how to declare it."""


@dataclasses.dataclass(frozen=True)
class ColumnChoices:
  """What the user declares about headers that the automatic match cannot settle.

  Attributes:
    rename: (header, variable name) pairs: the column holds that rhpc variable.
    ignore: headers of columns that hold no rhpc variable.
  """
  rename: tuple[tuple[str, str], ...] = ()
  ignore: tuple[str, ...] = ()

  @classmethod
  def parse(cls, column_map: str | None = None,
            ignore_columns: str | None = None) -> ColumnChoices:
    """From the layout options: ``column_map='Agee=age;Subtyp=molecular_subtype'`` and
    ``ignore_columns='Height;Notes'``.

    Raises:
      ColumnError: an entry without '=', or a name that is no rhpc variable.
    """
    rename = []
    for item in str(column_map or "").split(";"):
      if not item.strip():
        continue
      header, sep, name = item.rpartition("=")
      if not sep or not header.strip():
        raise ColumnError(f"column_map entry {item!r}: expected HEADER=variable")
      if name.strip() not in _VARIABLE_NAMES:
        raise ColumnError(f"column_map entry {item!r}: {name.strip()!r} is not an rhpc "
                          f"variable; they are {', '.join(_VARIABLE_NAMES)}")
      rename.append((header.strip(), name.strip()))
    ignore = tuple(h.strip() for h in str(ignore_columns or "").split(";") if h.strip())
    return cls(tuple(rename), ignore)


_VARIABLE_NAMES = tuple(v.name for v in VARIABLES)
# Every accepted header spelling and its variable, compared by _bare form.
_SPELLINGS = tuple((spelling, var.name) for var in VARIABLES
                   for spelling in (var.name.replace("_", " "), *var.columns))


def _bare(text: str) -> str:
  """Letters and digits only: case, spacing and punctuation do not make a header different."""
  return re.sub(r"[^a-z0-9]", "", normalise(text))


def _edit_distance(a: str, b: str) -> int:
  """Insertions, deletions, substitutions and swaps of neighbours that turn ``a`` into ``b``."""
  previous2, previous = None, list(range(len(b) + 1))
  for i, char_a in enumerate(a, start=1):
    current = [i]
    for j, char_b in enumerate(b, start=1):
      cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
      if previous2 is not None and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
        cost = min(cost, previous2[j - 2] + 1)
      current.append(cost)
    previous2, previous = previous, current
  return previous[-1]


def close_spelling(header: str) -> tuple[str, str] | None:
  """(spelling, variable) of the accepted header nearest ``header`` when ``header`` is not one
  but differs from it only by case, spacing, punctuation or one typo (a letter added, left
  out, changed, or two swapped); else None. One typo, not two: 'HER2 status' is two from
  'CHEK2 status'."""
  bare = _bare(header)
  if not bare:
    return None
  best = None
  for spelling, name in _SPELLINGS:
    target = _bare(spelling)
    distance = _edit_distance(bare, target)
    if distance <= 1 and (best is None or distance < best[0]):
      best = (distance, spelling, name)
  return None if best is None else best[1:]


def check_columns(headers: Sequence[str], choices: ColumnChoices = ColumnChoices(),
                  other: Iterable[str | None] = (), table: str = "the clinical table"
                  ) -> dict[str, str | None]:
  """Accounts for every header of a clinical table.

  A header is the spelling of one variable (:func:`find_columns`), declared in ``choices``
  (read as a variable, or ignored), one of ``other`` (the patient id, the label), or unrelated:
  not close to any variable's spelling (:func:`close_spelling`). Anything else would leave a
  variable Unknown for every patient, or read it from the wrong column, without a word.

  Returns:
    header -> the key rows should use instead (a variable name), or None: drop the column.

  Raises:
    ColumnError: naming every header close to a variable's spelling but not one, every
      variable two headers hold, and every declared header the table lacks; the message says
      how to declare them.
  """
  by_normalised = {normalise(h): h for h in headers}
  actions: dict[str, str | None] = {}
  problems = []
  for header, name in (*choices.rename, *((h, None) for h in choices.ignore)):
    found = by_normalised.get(normalise(header))
    if found is None:
      problems.append(f"{'column_map' if name else 'ignore_columns'} names {header!r}, which "
                      f"is not a column (the columns: {', '.join(map(repr, headers))})")
    else:
      actions[found] = name
  holders: dict[str, list[str]] = collections.defaultdict(list)
  for header, name in actions.items():
    if name is not None:
      holders[name].append(header)
  others = {normalise(o) for o in other if o}
  near, ignore_hint = [], []
  for header in headers:
    if header in actions or normalise(header) in others or not normalise(header):
      continue
    matched = find_columns([header])
    for name in matched:
      holders[name].append(header)
    close = None if matched else close_spelling(header)
    if close is not None:
      near.append(f"{header!r} is not a header of any rhpc variable but is close to "
                  f"{close[0]!r} (variable {close[1]}): column_map='{header.strip()}="
                  f"{close[1]}' reads it as {close[1]}")
      ignore_hint.append(header.strip())
  for name, found in holders.items():
    if len(found) > 1:
      problems.append(f"columns {' and '.join(map(repr, found))} both hold {name}: keep one "
                      f"(ignore_columns='{';'.join(h.strip() for h in found[1:])}')")
  problems += near
  if ignore_hint:
    problems.append(f"ignore_columns='{';'.join(ignore_hint)}' leaves them out")
  if problems:
    raise ColumnError(
        f"{table}: " + "; ".join(problems) + ". Declare columns with --layout_option "
        "column_map='HEADER=variable;...' and --layout_option ignore_columns='HEADER;...', or "
        "rename them in the table")
  return actions


@dataclasses.dataclass(frozen=True)
class ParsedRhpc:
  """Parsed rhpc values of N patients.

  Attributes:
    codes: int32 [N, 22], see :func:`parse_value`; ``UNKNOWN`` = -1.
    values: float32 [N, 22], raw numbers where the variable is numeric, NaN elsewhere.
  """
  codes: np.ndarray
  values: np.ndarray

  def __len__(self) -> int:
    return self.codes.shape[0]

  def take(self, index) -> "ParsedRhpc":
    return ParsedRhpc(self.codes[index], self.values[index])

  def decode(self, row: int) -> dict[str, Any]:
    """Canonical category names (or numbers) of one patient, None where Unknown."""
    out: dict[str, Any] = {}
    for j, var in enumerate(VARIABLES):
      code = int(self.codes[row, j])
      if code == UNKNOWN:
        out[var.name] = None
      elif var.kind == Kind.CONTINUOUS:
        out[var.name] = float(self.values[row, j])
      elif var.kind == Kind.MULTILABEL:
        out[var.name] = [c.name for i, c in enumerate(var.categories) if code >> i & 1]
      else:
        out[var.name] = var.categories[code].name
    return out


def parse_rows(rows: Sequence[Mapping[str, Any]],
               report: ParseReport | None = None) -> ParsedRhpc:
  """Parses clinical table rows (dicts keyed by header; headers matched with :func:`find_columns`).

  A variable whose column is absent is Unknown for every row. Never raises on a value.
  """
  codes = np.full((len(rows), len(VARIABLES)), UNKNOWN, np.int32)
  values = np.full((len(rows), len(VARIABLES)), np.nan, np.float32)
  column_cache: dict[tuple[str, ...], dict[str, str]] = {}
  for i, row in enumerate(rows):
    key = tuple(row.keys())
    if key not in column_cache:
      column_cache[key] = find_columns(key)
    columns = column_cache[key]
    for j, var in enumerate(VARIABLES):
      header = columns.get(var.name)
      if header is None:
        if report is not None:
          report.note_missing(var.name)
        continue
      codes[i, j], values[i, j] = parse_value(var, row[header], report)
  return ParsedRhpc(codes, values)


# --------------------------------------------------------------------------------------------
# The label
# --------------------------------------------------------------------------------------------
LABEL_COLUMNS = ("pcr", "label", "response", "pathologic response", "pathological response",
                 "pcr label", "pcr status")
_PCR_TOKENS = frozenset({"1", "yes", "y", "true", "pcr", "complete", "complete response",
                         "ypt0", "ypt0n0", "ypt0/isn0", "ypt0isn0"})
_NON_PCR_TOKENS = frozenset({"0", "no", "n", "false", "nonpcr", "non pcr", "no pcr", "rd",
                             "residual disease", "partial", "partial response", "npcr"})


def parse_label(raw: Any) -> int | None:
  """1 for pCR, 0 for non-pCR, None when missing or unrecognised."""
  text = normalise(raw)
  if re.fullmatch(r"[01](?:\.0+)?", text):
    return int(float(text))
  if text in _PCR_TOKENS:
    return 1
  if text in _NON_PCR_TOKENS or text.replace(" ", "") in _NON_PCR_TOKENS:
    return 0
  return None


def find_label_column(headers: Iterable[str]) -> str | None:
  by_normalised = {normalise(h): h for h in headers}
  for candidate in LABEL_COLUMNS:
    if candidate in by_normalised:
      return by_normalised[candidate]
  return None
