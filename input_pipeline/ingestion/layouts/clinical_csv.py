"""Reading a clinical CSV (the generic layout's clinical.csv, predict's --clinical) so that every
header and row is accounted for: its text encoding, its headers against the rhpc variables
(:func:`input_pipeline.clinical_table.check_columns`), and rows as long as the header.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from input_pipeline import clinical_table

PATIENT_ID_COLUMN = "patient_id"


def read_text(path: Path, encoding: str = "utf-8-sig") -> str:
  """The text of a table file.

  Raises:
    ValueError: the file is not in ``encoding``; the message names the file, the line and the
      byte, and says how to fix it.
  """
  data = path.read_bytes()
  try:
    return data.decode(encoding)
  except LookupError:
    raise ValueError(f"{path}: unknown text encoding {encoding!r} (clinical_encoding)") from None
  except UnicodeDecodeError as error:
    line = data[:error.start].count(b"\n") + 1
    raise ValueError(
        f"{path} line {line}: byte {data[error.start:error.start + 1]!r} is not {encoding} "
        f"text ({error.reason}); save the table as UTF-8 (Excel: 'CSV UTF-8') or name its "
        "encoding, e.g. --layout_option clinical_encoding=cp1252") from None


def read_clinical_csv(path: Path, columns: clinical_table.ColumnChoices | None = None,
                      encoding: str = "utf-8-sig"
                      ) -> tuple[list[str], dict[str, list[dict[str, str]]]]:
  """(headers, rows by patient id) of the clinical CSV.

  Every header is accounted for (:func:`clinical_table.check_columns`): a column declared as a
  variable is keyed by the variable's name in the rows, an ignored one is left out.

  Raises:
    ValueError: no patient_id column, a header the check cannot settle, text not in
      ``encoding``, or a row with more or fewer fields than the header (a value with an
      unquoted comma shifts every value after it); each names the file and the line.
  """
  reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""))
  headers = next(reader, [])
  id_column = next((h for h in headers if clinical_table.normalise(h) == "patient id"), None)
  if id_column is None:
    raise ValueError(f"{path}: no {PATIENT_ID_COLUMN!r} column (columns: {headers})")
  actions = clinical_table.check_columns(
      headers, columns or clinical_table.ColumnChoices(),
      other=(id_column, clinical_table.find_label_column(headers)), table=str(path))
  rows: dict[str, list[dict[str, str]]] = {}
  for fields in reader:
    if not any(field.strip() for field in fields):
      continue
    if len(fields) != len(headers):
      raise ValueError(f"{path} line {reader.line_num}: {len(fields)} values where the header "
                       f"has {len(headers)} columns (a value with an unquoted comma?); fix the "
                       "row")
    row = {actions.get(h, h): value for h, value in zip(headers, fields)
           if actions.get(h, h) is not None}
    key = row[id_column].strip()
    if key:
      rows.setdefault(key, []).append(row)
  return headers, rows
