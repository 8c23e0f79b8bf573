"""Tests of input_pipeline/clinical_table.py: every clinical column and value accounted for."""

from __future__ import annotations

import math

import layout_fixtures as fx
import pytest

from input_pipeline import clinical_table
from input_pipeline.clinical_table import ColumnChoices, ColumnError, check_columns, parse_value
from input_pipeline.ingestion.layouts import generic
from input_pipeline.schema import BY_NAME, UNKNOWN

_ID_AND_LABEL = ("patient_id", "pCR")


# ---- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variable, raw", [
    ("age", "-50"), ("age", "- 50"), ("age", "\u221250"), ("age", -50), ("weight", "-70"),
    ("weight", "-70 kg"), ("menarche_age", "-12"), ("age", "45-50"), ("weight", "60-70"),
    ("weight", "150 lb"), ("age", "50 kg"), ("age", "<50"), ("ct", "-2"), ("in_situ", "-1"),
])
def test_signs_ranges_and_units_are_kept_and_checked(variable, raw):
  report = clinical_table.ParseReport()
  code, value = parse_value(BY_NAME[variable], raw, report)
  assert code == UNKNOWN and math.isnan(value)
  assert report.unparsed == {(variable, str(raw)): 1}


@pytest.mark.parametrize("variable, raw, expected", [
    ("age", "+50", 50.0), ("age", "50 years", 50.0), ("age", "50 jaar", 50.0),
    ("weight", "62,5 kg", 62.5), ("weight", "62.5kg", 62.5), ("menarche_age", "12 yrs", 12.0),
])
def test_numbers_with_their_own_unit_parse(variable, raw, expected):
  assert parse_value(BY_NAME[variable], raw)[1] == expected


# ---- headers --------------------------------------------------------------------------------
@pytest.mark.parametrize("header, spelling", [
    ("Agee", "age"), ("Molecular subtyp", "molecular subtype"), ("MolecularSubtype", None),
    ("Weigth", "weight"), ("Weight (kg)", "weight kg"), ("Lateralty", "laterality"),
])
def test_a_header_close_to_a_variable_stops_naming_both(header, spelling):
  with pytest.raises(ColumnError) as raised:
    check_columns([*_ID_AND_LABEL, header], other=_ID_AND_LABEL, table="clinical.csv")
  message = str(raised.value)
  assert message.startswith("clinical.csv: ") and repr(header) in message
  if spelling is not None:
    assert repr(spelling) in message
  assert f"column_map='{header}=" in message and f"ignore_columns='{header}'" in message


@pytest.mark.parametrize("header", ["ER", "PR status", "HER2 status", "Ki-67", "Notes", "BMI",
                                    "Study date", "Name"])
def test_unrelated_headers_pass(header):
  assert check_columns([*_ID_AND_LABEL, "Age", header], other=_ID_AND_LABEL) == {}


def test_declared_headers_are_read_or_left_out():
  choices = ColumnChoices.parse("Agee=age; Molecular subtyp=molecular_subtype", "Height")
  assert choices == ColumnChoices((("Agee", "age"), ("Molecular subtyp", "molecular_subtype")),
                                  ("Height",))
  actions = check_columns([*_ID_AND_LABEL, "Agee ", "Molecular subtyp", "Height"], choices,
                          other=_ID_AND_LABEL)
  assert actions == {"Agee ": "age", "Molecular subtyp": "molecular_subtype", "Height": None}


def test_two_columns_of_one_variable_and_bad_declarations_are_refused():
  with pytest.raises(ColumnError, match="'Age' and 'Age at diagnosis' both hold age.*"
                                        "ignore_columns='Age at diagnosis'"):
    check_columns(["Age", "Age at diagnosis"])
  with pytest.raises(ColumnError, match="'Agee' and 'Age' both hold age"):
    check_columns(["Agee", "Age"], ColumnChoices.parse("Agee=age"))
  with pytest.raises(ColumnError, match="column_map names 'Ag', which is not a column"):
    check_columns(["Age"], ColumnChoices.parse("Ag=age"))
  with pytest.raises(ColumnError, match="'years' is not an rhpc variable"):
    ColumnChoices.parse("Agee=years")
  with pytest.raises(ColumnError, match="expected HEADER=variable"):
    ColumnChoices.parse("Agee")


# ---- the generic layout's clinical.csv ------------------------------------------------------
def _table(tmp_path, rows):
  return fx.write_csv(tmp_path / "clinical.csv", rows)


def test_generic_table_with_a_misspelt_header_stops_unless_declared(tmp_path):
  _table(tmp_path, [{"patient_id": "A", "pCR": "1", "Agee": "51", "Molecular subtyp": "TNBC"}])
  with pytest.raises(ValueError, match="'Agee' .* close to 'age'.*'Molecular subtyp' .* close "
                                       "to 'molecular subtype'"):
    generic.discover(tmp_path)
  [source] = generic.discover(tmp_path, column_map="Agee=age",
                              ignore_columns="Molecular subtyp")
  parsed = clinical_table.parse_rows([source.clinical]).decode(0)
  assert parsed["age"] == 51.0 and parsed["molecular_subtype"] is None
  assert "Molecular subtyp" not in source.clinical


def test_generic_table_not_in_utf8_names_the_file_and_line(tmp_path):
  path = tmp_path / "clinical.csv"
  path.write_bytes("patient_id,pCR,Histology\nA,1,ductal\nB,0,lobulair \u00e9\n".encode("cp1252"))
  with pytest.raises(ValueError, match=rf"{path} line 3: byte b'\\xe9' is not utf-8-sig.*"
                                       "clinical_encoding=cp1252"):
    generic.discover(tmp_path)
  sources = generic.discover(tmp_path, clinical_encoding="cp1252")
  assert sources[1].clinical["Histology"] == "lobulair \u00e9"
  with pytest.raises(ValueError, match="unknown text encoding 'latin-9x'"):
    generic.discover(tmp_path, clinical_encoding="latin-9x")


def test_generic_row_with_an_unquoted_comma_names_the_line(tmp_path):
  path = tmp_path / "clinical.csv"
  path.write_text("patient_id,pCR,Weight,Age\nA,1,62,51\nB,0,62,5,48\n")
  with pytest.raises(ValueError, match=f"{path} line 3: 5 values where the header has 4"):
    generic.discover(tmp_path)
