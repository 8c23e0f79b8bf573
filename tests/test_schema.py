import math

import numpy as np
import pytest

from input_pipeline import clinical_table, encoding, schema
from input_pipeline.clinical_table import parse_value
from input_pipeline.schema import BY_NAME, UNKNOWN


def test_declares_the_papers_22_variables_by_group():
  groups = [v.group.value for v in schema.VARIABLES]
  assert len(schema.VARIABLES) == 22
  assert {g: groups.count(g) for g in "rhpc"} == {"r": 4, "h": 5, "p": 9, "c": 4}
  assert [v.name for v in schema.VARIABLES if v.kind == schema.Kind.CONTINUOUS] == ["age"]


@pytest.mark.parametrize("variable, raw, expected", [
    ("molecular_subtype", "Triple Negative", "Triple negative"),
    ("molecular_subtype", "TNBC", "Triple negative"),
    ("molecular_subtype", " her2-enriched ", "HER2-enriched ER-/HER2+"),
    ("location", "C50.4", "C50.4"),
    ("location", "c504", "C50.4"),
    ("location", "upper outer quadrant", "C50.4"),
    ("ct", "cT2", "2"),
    ("ct", "2", "2"),
    ("ct", 2.0, "2"),
    ("ct", "T4b", "4B"),
    ("cn", "cN1", "1"),
    ("cm", "M0", "0"),
    ("laterality", "Left", "left"),
    ("laterality", " left ", "left"),
    ("laterality", "R", "right"),
    ("differentiation", "G3", "poor"),
    ("in_situ", "Yes", "yes"),
    ("histology", "Invasive ductal carcinoma", "ductal"),
    ("brca1", "wild-type", "wild type"),
    ("menopause", "postmenopausal", "post"),
    ("weight", "72.5 kg", "65-75 kg"),
    ("weight", 54.9, "<55 kg"),
    ("menarche_age", "12", "12"),
    ("menarche_age", 11, "<=11"),
])
def test_messy_values_parse_to_their_category(variable, raw, expected):
  var = BY_NAME[variable]
  code, _ = parse_value(var, raw)
  assert code != UNKNOWN and var.categories[code].name == expected


@pytest.mark.parametrize("raw", ["", "   ", None, float("nan"), "n/a", "N.A.", "NA", "unknown",
                                 "-", "?"])
def test_missing_tokens_are_unknown_and_counted_as_missing(raw):
  report = clinical_table.ParseReport()
  assert parse_value(BY_NAME["laterality"], raw, report) == (UNKNOWN, pytest.approx(math.nan,
                                                                                    nan_ok=True))
  assert report.missing["laterality"] == 1 and not report.unparsed


@pytest.mark.parametrize("variable, raw", [
    ("laterality", "both"), ("location", "C51.0"), ("age", "abc"), ("age", 300),
    ("age", float("inf")), ("ct", "T9"), ("therapy", "chemo + surgery"), ("weight", -3),
    ("laterality", ["left"]), ("sex", {"a": 1}), ("age", True),
])
def test_unparseable_values_become_unknown_and_are_counted(variable, raw):
  report = clinical_table.ParseReport()
  code, value = parse_value(BY_NAME[variable], raw, report)
  assert code == UNKNOWN and math.isnan(value)
  assert report.unparsed[(variable, str(raw))] == 1


@pytest.mark.parametrize("variable, raw, expected", [
    # HER2 status alone: ER+/HER2+ (triple positive) or ER-/HER2+ (HER2-enriched), whose pCR
    # rates differ twofold in Table 2; both spellings are Unknown, never HER2-enriched.
    ("molecular_subtype", "HER2 positive", None),
    ("molecular_subtype", "HER2+", None),
    ("molecular_subtype", "HER2-", None),  # negative, and normalises to 'her2'
    ("molecular_subtype", "ER+/HER2+", "Triple positive ER+/HER2+"),
    ("molecular_subtype", "ER positive HER2 positive", "Triple positive ER+/HER2+"),
    ("molecular_subtype", "ER-/HER2+", "HER2-enriched ER-/HER2+"),
    ("molecular_subtype", "HER2-enriched", "HER2-enriched ER-/HER2+"),
    # Unspecified stages name several of the table's substages: Unknown, not the first one.
    ("ct", "1", None), ("ct", "cT1", None), ("ct", 1.0, None), ("ct", "T4", None),
    ("ct", "T1c", "1C"), ("ct", "cT4b", "4B"),
    ("cn", "N2", None), ("cn", "3", None), ("cn", "N2a", "2A"), ("cn", "N1", "1"),
])
def test_spellings_of_several_categories_are_unknown_and_counted(variable, raw, expected):
  var = BY_NAME[variable]
  report = clinical_table.ParseReport()
  code, _ = parse_value(var, raw, report)
  if expected is None:
    assert code == UNKNOWN and report.unparsed[(variable, str(raw))] == 1
  else:
    assert var.categories[code].name == expected and not report.unparsed


def test_therapy_is_multilabel():
  code, _ = parse_value(BY_NAME["therapy"], "Chemotherapy + Immunotherapy")
  assert code == 0b101
  code, _ = parse_value(BY_NAME["therapy"], "chemo; endocrine")
  assert code == 0b011


def test_age_is_continuous_and_range_checked():
  assert parse_value(BY_NAME["age"], "45 y") == (0, 45.0)
  assert parse_value(BY_NAME["age"], 61) == (0, 61.0)
  assert parse_value(BY_NAME["age"], "101,5")[1] == 101.5


def test_parse_rows_finds_columns_under_real_headers():
  rows = [
      {"Patient": "x", "Age at diagnosis": "52", "Molecular Subtype ": "TNBC", "Side": "R",
       "Neoadjuvant therapy": "chemo", "cT": "cT3", "unrelated": "zzz"},
      {"Patient": "y", "Age at diagnosis": None, "Molecular Subtype ": "n/a", "Side": "left",
       "Neoadjuvant therapy": "", "cT": "T9", "unrelated": ""},
  ]
  report = clinical_table.ParseReport()
  parsed = clinical_table.parse_rows(rows, report)
  first = parsed.decode(0)
  assert first["age"] == 52.0 and first["molecular_subtype"] == "Triple negative"
  assert first["laterality"] == "right" and first["therapy"] == ["chemotherapy"]
  assert first["ct"] == "3" and first["location"] is None
  second = parsed.decode(1)
  assert second["laterality"] == "left"
  assert all(second[k] is None for k in ("age", "molecular_subtype", "therapy", "ct"))
  assert report.unparsed[("ct", "T9")] == 1
  # 'location' has no column at all: missing for both rows.
  assert report.missing["location"] == 2


def test_model_inputs_layout():
  rows = [{"age": "60", "laterality": "left", "therapy": "chemo+immuno"}, {}]
  parsed = clinical_table.parse_rows(rows)
  x = encoding.model_inputs(parsed)
  assert x.shape == (2, encoding.INPUT_DIM) and x.dtype == np.float32
  for var, (start, stop) in zip(schema.VARIABLES, encoding.INPUT_SLICES):
    assert stop - start == var.input_dim
    unknown_flag = x[:, stop - 1]
    np.testing.assert_array_equal(unknown_flag[1], 1.0)  # second row: all Unknown
    if var.kind == schema.Kind.CATEGORICAL:
      np.testing.assert_array_equal(x[:, start:stop].sum(axis=1), 1.0)
  start, _ = encoding.INPUT_SLICES[schema.VARIABLE_NAMES.index("age")]
  assert x[0, start] == pytest.approx((60 - 50) / 10) and x[0, start + 1] == 0.0
  start, stop = encoding.INPUT_SLICES[schema.VARIABLE_NAMES.index("therapy")]
  np.testing.assert_array_equal(x[0, start:stop], [1, 0, 1, 0])


def test_aux_targets_mask_unknown_and_unordered_categories():
  rows = [{"ct": "other", "laterality": "R", "age": 70, "therapy": "hormonal"},
          {"ct": "cT2", "laterality": "", "age": ""}]
  targets, masks = encoding.aux_targets(clinical_table.parse_rows(rows))
  assert targets.shape == masks.shape == (2, encoding.AUX_DIM)

  def cols(name):
    start, stop = encoding.AUX_SLICES[schema.VARIABLE_NAMES.index(name)]
    return slice(start, stop)
  # 'other' cT has no ordinal: excluded from the regression loss.
  assert masks[0, cols("ct")].sum() == 0 and masks[1, cols("ct")].sum() == 1
  assert targets[1, cols("ct")][0] == 2.0
  np.testing.assert_array_equal(targets[0, cols("laterality")], [0, 1])
  np.testing.assert_array_equal(masks[:, cols("laterality")], [[1, 1], [0, 0]])
  assert targets[0, cols("age")][0] == pytest.approx(2.0) and masks[1, cols("age")][0] == 0
  np.testing.assert_array_equal(targets[0, cols("therapy")], [0, 1, 0])
  np.testing.assert_array_equal(masks[1, cols("therapy")], [0, 0, 0])


@pytest.mark.parametrize("raw, label", [("1", 1), ("0", 0), ("pCR", 1), ("non-pCR", 0),
                                        ("No pCR", 0), ("yes", 1), (1.0, 1), ("", None),
                                        ("pending", None), ("2", None)])
def test_parse_label(raw, label):
  assert clinical_table.parse_label(raw) == label


def test_aliases_are_unambiguous_and_categories_carry_counts():
  for var in schema.VARIABLES:
    if var.kind == schema.Kind.CONTINUOUS:
      continue
    assert all(c.pcr + c.non_pcr > 0 for c in var.categories), var.name
    names = [c.name for c in var.categories]
    assert len(set(names)) == len(names)
