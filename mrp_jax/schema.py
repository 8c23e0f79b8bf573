"""The rhpc variables and the NAT phases, declared once.

The 22 structured variables of the paper (4 radiological, 5 histopathological, 9 personal,
4 clinical; Table 2 and Methods) are declared here with their categories, the spellings that
real clinical tables use for them, the paper's per-category pCR / non-pCR counts, and the weight
of their auxiliary loss in the cross-modal knowledge predictor. Everything else derives from
this declaration: parsing raw table values, the model's input layout, the auxiliary heads and
targets, the synthetic cohort, report tables and attribution labels.

Three kinds of variable:

* ``categorical``: one-hot over the declared categories plus a trailing Unknown column.
  Numeric variables that the paper one-hot encodes (weight, age at menarche) declare ``bins``
  and are binned at parse time.
* ``continuous``: age only (the paper models it as continuous). Input is the standardised value
  and an Unknown flag.
* ``multilabel``: neoadjuvant therapy (a patient can receive several); multi-hot plus an Unknown
  flag, one binary auxiliary target per therapy.

Parsed values are integer codes: the category index (categorical), a bit mask of labels
(multilabel) or 0 (continuous, whose value is carried separately); ``UNKNOWN`` (-1) marks a
missing or unparseable value. Unparseable values never raise: they become Unknown and are
counted in a :class:`ParseReport`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

UNKNOWN = -1


class Phase(enum.IntEnum):
  """Moments of neoadjuvant care; the integer is the index of the time-embedding one-hot."""
  PRE = 0
  MID = 1
  POST = 2

  @property
  def label(self) -> str:
    return {0: "Pre-NAT", 1: "Mid-NAT", 2: "Post-NAT"}[int(self)]


PHASES = tuple(Phase)
PHASE_NAMES = tuple(p.name.lower() for p in Phase)  # ('pre', 'mid', 'post')

# The three trained models; model name -> the batch key of its images (None: no images).
MODEL_NAMES = ("rhpc", "img_rhpc", "imr_rhpc")
IMAGE_KEYS = {"rhpc": None, "img_rhpc": "mg", "imr_rhpc": "mri"}
DISPLAY_NAMES = {"rhpc": "rhpc", "img_rhpc": "iMGrhpc", "imr_rhpc": "iMRrhpc", "mrp": "MRP"}


class Group(str, enum.Enum):
  RADIOLOGICAL = "r"
  HISTOPATHOLOGICAL = "h"
  PERSONAL = "p"
  CLINICAL = "c"


class Kind(str, enum.Enum):
  CATEGORICAL = "categorical"
  CONTINUOUS = "continuous"
  MULTILABEL = "multilabel"


class AuxLoss(str, enum.Enum):
  """How the knowledge predictor learns a variable from image features alone."""
  CE = "ce"    # softmax cross-entropy over the known categories
  MSE = "mse"  # regression on the declared ordinal (categorical) or standardised value
  BCE = "bce"  # one sigmoid per label (multilabel)


@dataclasses.dataclass(frozen=True)
class Category:
  """One category of a variable.

  Attributes:
    name: canonical name, as reports print it.
    aliases: other spellings found in real tables; matched after normalisation (lower case,
      punctuation and whitespace removed), so 'Triple-negative ' and 'TRIPLE NEGATIVE' agree.
    pcr, non_pcr: patient counts in the paper's Table 2 (all splits together), or an assumed
      count where the paper gives none (see ``Variable.counts_source``). Drive the synthetic
      cohort.
    ordinal: position on an ordered scale for MSE auxiliary targets; None excludes the
      category from that loss (for example 'other').
    bounds: for binned numeric variables, the half-open interval [low, high) of raw values.
  """
  name: str
  aliases: tuple[str, ...] = ()
  pcr: float = 0.0
  non_pcr: float = 0.0
  ordinal: float | None = None
  bounds: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class Variable:
  """One rhpc variable.

  Attributes:
    name: identifier used in configs, records and reports (snake_case).
    label: human-readable name.
    group: r / h / p / c.
    kind: categorical / continuous / multilabel.
    categories: the known categories (Unknown is implicit and always last in the one-hot).
    aux_loss, aux_weight: auxiliary loss of the knowledge predictor (DESIGN.md section 2).
    columns: column headers accepted for this variable in clinical tables (normalised).
    center, scale, valid_range: continuous variables: standardisation and plausible range of raw
      values (outside it the value is Unknown).
    unit: unit of raw numeric values.
    counts_source: 'table2' when the counts are the paper's, else a note on what was assumed.
  """
  name: str
  label: str
  group: Group
  kind: Kind
  aux_loss: AuxLoss
  aux_weight: float
  categories: tuple[Category, ...] = ()
  columns: tuple[str, ...] = ()
  center: float = 0.0
  scale: float = 1.0
  valid_range: tuple[float, float] | None = None
  unit: str = ""
  counts_source: str = "table2"

  @property
  def num_categories(self) -> int:
    return len(self.categories)

  @property
  def category_names(self) -> tuple[str, ...]:
    return tuple(c.name for c in self.categories)

  @property
  def is_binned(self) -> bool:
    return any(c.bounds is not None for c in self.categories)

  @property
  def input_dim(self) -> int:
    """Width of this variable's slice of the model input vector."""
    if self.kind == Kind.CONTINUOUS:
      return 2  # standardised value, Unknown flag
    return self.num_categories + 1  # one-hot / multi-hot, Unknown

  @property
  def aux_dim(self) -> int:
    """Width of this variable's auxiliary head output."""
    if self.aux_loss == AuxLoss.CE:
      return self.num_categories
    if self.aux_loss == AuxLoss.BCE:
      return self.num_categories
    return 1


def _c(name, pcr=0.0, non_pcr=0.0, *aliases, ordinal=None, bounds=None):
  return Category(name, tuple(aliases), float(pcr), float(non_pcr), ordinal, bounds)


# --------------------------------------------------------------------------------------------
# The declaration. Counts are the "Total" columns of the paper's Table 2 (1,407 patients:
# 469 pCR, 938 non-pCR) wherever the table has the variable. Aux weights: DESIGN.md section 2
# (the authors' code); density, histology and tumour type are not in the authors' list and get
# 0.1 like the other tumour descriptors.
# --------------------------------------------------------------------------------------------
_ = _c
VARIABLES: tuple[Variable, ...] = (
    # ---- radiological ------------------------------------------------------------------------
    Variable(
        "location", "Tumour location (ICD-O)", Group.RADIOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE, 1.0,
        categories=(
            _("C50.0", 0, 2, "nipple", "c500", "500"),
            _("C50.1", 35, 104, "central", "central portion", "c501", "501"),
            _("C50.2", 123, 193, "upper inner", "upper inner quadrant", "uiq", "c502", "502"),
            _("C50.3", 41, 80, "lower inner", "lower inner quadrant", "liq", "c503", "503"),
            _("C50.4", 208, 451, "upper outer", "upper outer quadrant", "uoq", "c504", "504"),
            _("C50.5", 48, 80, "lower outer", "lower outer quadrant", "loq", "c505", "505"),
            _("C50.6", 4, 5, "axillary tail", "c506", "506"),
            _("C50.8", 5, 18, "overlapping", "overlapping lesion", "c508", "508"),
            _("C50.9", 4, 3, "multiple quadrants", "breast nos", "c509", "509"),
        ),
        columns=("location", "tumour location", "tumor location", "icd o", "icdo", "site"),
    ),
    Variable(
        "laterality", "Laterality", Group.RADIOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE, 1.0,
        categories=(
            _("left", 241, 477, "l", "lt", "links", "sinistra"),
            _("right", 228, 459, "r", "rt", "rechts", "dextra"),
        ),
        columns=("laterality", "lateral", "side", "tumor side", "tumour side"),
    ),
    Variable(
        "focality", "Focality", Group.RADIOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE, 0.1,
        categories=(
            _("unifocal", 312, 449, "uni", "single", "solitary", "uni focal"),
            _("multifocal", 0, 36, "multi", "multicentric", "multi focal"),
            _("satellite lesion", 131, 377, "satellite", "satellites"),
        ),
        columns=("focality", "multifocal", "multifocality"),
    ),
    Variable(
        "density", "Mammographic density (BI-RADS)", Group.RADIOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE, 0.1,
        # Table 2 gives no counts; marginals are the usual BI-RADS split (10/40/40/10) and the pCR
        # rates the paper reports in the text (18.8% less dense, 20.5% dense).
        categories=(
            _("A", 18.8, 81.2, "a", "1", "fatty", "almost entirely fatty", ordinal=0.0),
            _("B", 75.2, 324.8, "b", "2", "scattered", "scattered fibroglandular", ordinal=1.0),
            _("C", 82.0, 318.0, "c", "3", "heterogeneously dense", "heterogeneous", ordinal=2.0),
            _("D", 20.5, 79.5, "d", "4", "extremely dense", "extreme", ordinal=3.0),
        ),
        columns=("density", "breast density", "mammographic density", "birads density",
                 "acr density"),
        counts_source="assumed: BI-RADS 10/40/40/10; pCR 18.8% (A,B) vs 20.5% (C,D) from the text",
    ),
    # ---- histopathological -------------------------------------------------------------------
    Variable(
        "molecular_subtype", "Molecular subtype", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE, 1.0,
        categories=(
            _("Luminal A", 16, 397, "luminal a", "lum a", "luma"),
            _("Luminal B-HER2neg", 35, 182, "luminal b", "luminal b her2n", "luminal b her2neg",
              "luminal b her2 negative", "lum b", "lumb"),
            _("Luminal-like ER+/HER2-", 51, 579, "luminal like", "er+/her2-", "er pos her2 neg",
              "hr+/her2-", "er positive her2 negative", "hr positive her2 negative"),
            _("Triple positive ER+/HER2+", 126, 155, "triple positive", "er+/her2+",
              "hr+/her2+", "luminal b her2 positive", "luminal b her2pos", "luminal her2"),
            _("HER2-enriched ER-/HER2+", 113, 27, "her2 enriched", "her2-enriched", "her2+",
              "er-/her2+", "hr-/her2+", "her2 positive", "her2pos", "her2"),
            _("Triple negative", 177, 176, "triple negative", "tnbc", "tn", "er-/her2-",
              "hr-/her2-", "basal", "basal like"),
        ),
        columns=("molecular subtype", "subtype", "mol subtype", "receptor subtype"),
    ),
    Variable(
        "histology", "Tumour histology", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
        0.1,
        categories=(
            _("ductal", 448, 790, "idc", "ductal carcinoma", "nst", "invasive ductal",
              "invasive ductal carcinoma", "no special type"),
            _("lobular", 8, 122, "ilc", "lobular carcinoma", "invasive lobular",
              "invasive lobular carcinoma"),
            _("other", 12, 24, "mixed", "mucinous", "metaplastic", "other type"),
        ),
        columns=("histology", "tumour histology", "tumor histology", "histologic type",
                 "histological type"),
    ),
    Variable(
        "tumour_type", "Tumour type", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE, 0.1,
        # The paper names the variable but lists no categories; we use the radiological lesion
        # type reported with DCE-MRI, with assumed counts at the cohort's pCR rate.
        categories=(
            _("mass", 380, 700, "mass lesion", "mass enhancement"),
            _("non-mass", 40, 150, "nonmass", "non mass", "nme", "non-mass enhancement"),
            _("mass and non-mass", 49, 88, "mixed", "mass + non-mass", "mass+nme", "both"),
        ),
        columns=("tumour type", "tumor type", "lesion type"),
        counts_source="assumed: categories and counts not in the paper",
    ),
    Variable(
        "differentiation", "Differentiation grade", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE, 0.1,
        categories=(
            _("non", 0, 1, "none", "undifferentiated", "g4", ordinal=3.0),
            _("poor", 309, 308, "poorly", "poorly differentiated", "g3", "grade 3", "3", "high",
              ordinal=2.0),
            _("moderate", 129, 487, "moderately", "moderately differentiated", "g2", "grade 2",
              "2", "intermediate", ordinal=1.0),
            _("well", 5, 52, "well differentiated", "g1", "grade 1", "1", "low", ordinal=0.0),
        ),
        columns=("differentiation", "grade", "tumour grade", "tumor grade",
                 "differentiation grade", "nottingham grade"),
    ),
    Variable(
        "in_situ", "In-situ component", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
        0.1,
        categories=(
            _("yes", 156, 474, "y", "present", "1", "true", "dcis", "positive", "pos"),
            _("no", 305, 460, "n", "absent", "0", "false", "negative", "neg"),
        ),
        columns=("in situ", "in situ component", "insitu", "dcis component"),
    ),
    # ---- personal ----------------------------------------------------------------------------
    Variable(
        "age", "Age", Group.PERSONAL, Kind.CONTINUOUS, AuxLoss.MSE, 1e-4,
        columns=("age", "age at diagnosis", "age years", "age at screening", "patient age"),
        center=50.0, scale=10.0, valid_range=(15.0, 105.0), unit="years",
        # Table 2 bins age at 50: <=50 310 pCR / 511 non-pCR; >50 159 / 427.
        counts_source="table2 (binned at 50 years)",
    ),
    Variable(
        "sex", "Sex", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE, 1e-4,
        categories=(
            _("female", 468, 936, "f", "woman", "w", "vrouw", "v"),
            _("male", 1, 2, "m", "man"),
        ),
        columns=("sex", "gender"),
    ),
    Variable(
        "weight", "Weight", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.MSE, 1e-4,
        categories=(
            _("<55 kg", 70, 130, ordinal=0.0, bounds=(0.0, 55.0)),
            _("55-65 kg", 130, 250, ordinal=1.0, bounds=(55.0, 65.0)),
            _("65-75 kg", 120, 250, ordinal=2.0, bounds=(65.0, 75.0)),
            _("75-85 kg", 80, 170, ordinal=3.0, bounds=(75.0, 85.0)),
            _(">=85 kg", 69, 138, ordinal=4.0, bounds=(85.0, math.inf)),
        ),
        columns=("weight", "weight kg", "body weight"),
        valid_range=(25.0, 250.0), unit="kg",
        counts_source="assumed: not in Table 2; bins of a typical Dutch cohort at the pCR rate",
    ),
    Variable(
        "menarche_age", "Age at menarche", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.MSE, 1e-4,
        categories=(
            _("<=11", 80, 160, ordinal=0.0, bounds=(0.0, 12.0)),
            _("12", 90, 180, ordinal=1.0, bounds=(12.0, 13.0)),
            _("13", 120, 240, ordinal=2.0, bounds=(13.0, 14.0)),
            _("14", 100, 200, ordinal=3.0, bounds=(14.0, 15.0)),
            _(">=15", 79, 158, ordinal=4.0, bounds=(15.0, math.inf)),
        ),
        columns=("menarche", "age at menarche", "menarche age"),
        valid_range=(7.0, 21.0), unit="years",
        counts_source="assumed: not in Table 2; typical distribution at the pCR rate",
    ),
    Variable(
        "menopause", "Menopausal status", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE, 0.01,
        categories=(
            _("post", 114, 299, "yes", "y", "postmenopausal", "post menopausal", "1", "true"),
            _("pre", 354, 637, "no", "n", "premenopausal", "pre menopausal", "peri",
              "perimenopausal", "0", "false"),
        ),
        columns=("menopause", "menopausal status", "menopausal"),
    ),
    *(
        Variable(
            gene.lower(), f"{gene} mutation", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE, 0.01,
            # Table 2 reports carriers only (e.g. BRCA1 52 pCR / 43 non-pCR); non-carriers are
            # the tested remainder, which the table does not give: assumed 300 / 700.
            categories=(
                _("mutated", carriers[0], carriers[1], "yes", "y", "positive", "pos", "carrier",
                  "mutation", "1", "true", "pathogenic"),
                _("wild type", 300, 700, "no", "n", "negative", "neg", "wt", "wildtype",
                  "non carrier", "0", "false", "not mutated"),
            ),
            columns=(gene.lower(), f"{gene.lower()} mutation", f"{gene.lower()} status"),
            counts_source="table2 (carriers); non-carriers assumed",
        )
        for gene, carriers in (("BRCA1", (52, 43)), ("BRCA2", (8, 17)), ("CHEK2", (5, 15)),
                               ("TP53", (0, 1)))
    ),
    # ---- clinical ----------------------------------------------------------------------------
    Variable(
        "ct", "Clinical T stage (cT)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE, 1e-4,
        categories=(
            _("1B", 14, 15, "t1b", "ct1b", ordinal=1.0),
            _("1C", 108, 175, "t1c", "ct1c", "1", "t1", "ct1", ordinal=1.5),
            _("2", 270, 537, "t2", "ct2", ordinal=2.0),
            _("3", 54, 175, "t3", "ct3", ordinal=3.0),
            _("4A", 0, 1, "t4a", "ct4a", ordinal=4.0),
            _("4B", 5, 18, "t4b", "ct4b", "4", "t4", "ct4", ordinal=4.3),
            _("4D", 5, 7, "t4d", "ct4d", ordinal=4.6),
            _("IS", 3, 3, "tis", "ctis", ordinal=0.0),
            _("other", 10, 7, "tx", "ctx", "t0", "ct0", "x"),
        ),
        columns=("ct", "clinical t", "t stage", "clinical t stage", "ct stage"),
    ),
    Variable(
        "cn", "Clinical N stage (cN)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE, 1e-4,
        categories=(
            _("0", 187, 277, "n0", "cn0", ordinal=0.0),
            _("0IS", 0, 3, "n0is", "cn0is", "n0(i+)", "n0i+", ordinal=0.2),
            _("0S", 45, 57, "n0s", "cn0s", "n0(sn)", "n0sn", ordinal=0.1),
            _("1", 152, 425, "n1", "cn1", ordinal=1.0),
            _("1MS", 4, 9, "n1ms", "cn1ms", "n1mi", "n1mi(sn)", ordinal=0.8),
            _("1S", 7, 30, "n1s", "cn1s", "n1(sn)", "n1sn", ordinal=1.0),
            _("2A", 0, 2, "n2a", "cn2a", "2", "n2", "cn2", ordinal=2.0),
            _("2B", 6, 4, "n2b", "cn2b", ordinal=2.3),
            _("3A", 24, 43, "n3a", "cn3a", "3", "n3", "cn3", ordinal=3.0),
            _("3B", 26, 39, "n3b", "cn3b", ordinal=3.3),
            _("3C", 10, 39, "n3c", "cn3c", ordinal=3.6),
            _("other", 8, 10, "nx", "cnx", "x"),
        ),
        columns=("cn", "clinical n", "n stage", "clinical n stage", "cn stage"),
    ),
    Variable(
        "cm", "Clinical M stage (cM)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE, 1e-4,
        categories=(
            _("0", 451, 884, "m0", "cm0", ordinal=0.0),
            _("1", 14, 51, "m1", "cm1", ordinal=1.0),
        ),
        columns=("cm", "clinical m", "m stage", "clinical m stage", "cm stage"),
    ),
    Variable(
        "therapy", "Neoadjuvant therapy", Group.CLINICAL, Kind.MULTILABEL, AuxLoss.BCE, 0.025,
        # Multi-label: Table 2's rows sum to more than the cohort (patients get several).
        categories=(
            _("chemotherapy", 464, 895, "chemo", "ct", "nac", "nact", "chemotherapie"),
            _("hormonal therapy", 8, 79, "hormonal", "hormonaltherapy", "endocrine",
              "endocrine therapy", "het", "net", "ht"),
            _("immunotherapy", 242, 175, "immuno", "it", "anti her2", "anti-her2",
              "trastuzumab", "pembrolizumab", "targeted"),
        ),
        columns=("therapy", "neoadjuvant therapy", "treatment", "nat", "nat regimen",
                 "neoadjuvant treatment"),
    ),
)

VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in VARIABLES)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}
assert len(VARIABLES) == 22, len(VARIABLES)

# Values that mean "not recorded" in real tables, compared with spaces, dots, slashes and
# dashes removed ('n/a', 'N.A.', ' - ' and 'not known' all match).
_MISSING_TOKENS = frozenset({
    "", "nan", "na", "none", "null", "unknown", "unk", "missing", "notknown", "notavailable",
    "onbekend", "?", "??", "nd", "notdone", "nk", "nvt", "notapplicable", "notrecorded",
})
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
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

  def merge(self, other: "ParseReport") -> None:
    self.unparsed.update(other.unparsed)
    self.missing.update(other.missing)

  def summary(self) -> dict[str, Any]:
    """A JSON-friendly summary: {'unparsed': {var: {raw: n}}, 'missing': {var: n}}."""
    unparsed: dict[str, dict[str, int]] = {}
    for (var, raw), n in sorted(self.unparsed.items()):
      unparsed.setdefault(var, {})[raw] = n
    return {"unparsed": unparsed, "missing": dict(sorted(self.missing.items()))}


def _parse_number(text: str) -> float | None:
  match = _NUMBER.search(text)
  if match is None:
    return None
  return float(match.group(0).replace(",", "."))


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
    number = raw if isinstance(raw, (int, float, np.number)) else _parse_number(text)
    if isinstance(number, bool) or number is None or not math.isfinite(float(number)):
      # A binned variable may also be written as its category name ('<=11').
      index = _ALIASES[var.name].get(_token(text))
      return (index, math.nan) if index is not None else unparsed()
    number = float(number)
    low, high = var.valid_range or (-math.inf, math.inf)
    if not low <= number <= high:
      return unparsed()
    if var.kind == Kind.CONTINUOUS:
      return 0, number
    for index, cat in enumerate(var.categories):
      if cat.bounds[0] <= number < cat.bounds[1]:
        return index, number
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
# Model-facing layout
# --------------------------------------------------------------------------------------------
def _offsets(widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
  bounds, start = [], 0
  for w in widths:
    bounds.append((start, start + w))
    start += w
  return tuple(bounds)


INPUT_SLICES: tuple[tuple[int, int], ...] = _offsets([v.input_dim for v in VARIABLES])
INPUT_DIM: int = INPUT_SLICES[-1][1]
AUX_SLICES: tuple[tuple[int, int], ...] = _offsets([v.aux_dim for v in VARIABLES])
AUX_DIM: int = AUX_SLICES[-1][1]
AUX_WEIGHTS: dict[str, float] = {v.name: v.aux_weight for v in VARIABLES}


def model_inputs(parsed: ParsedRhpc) -> np.ndarray:
  """The rhpc model input, float32 [N, INPUT_DIM]: per variable its one-hot (or multi-hot, or
  [standardised value, 0]) followed by an Unknown flag."""
  n = len(parsed)
  out = np.zeros((n, INPUT_DIM), np.float32)
  rows = np.arange(n)
  for j, (var, (start, stop)) in enumerate(zip(VARIABLES, INPUT_SLICES)):
    code = parsed.codes[:, j]
    known = code != UNKNOWN
    out[~known, stop - 1] = 1.0
    if var.kind == Kind.CONTINUOUS:
      out[known, start] = (parsed.values[known, j] - var.center) / var.scale
    elif var.kind == Kind.MULTILABEL:
      bits = (code[:, None] >> np.arange(var.num_categories)) & 1
      out[:, start:stop - 1] = np.where(known[:, None], bits, 0)
    else:
      out[rows[known], start + code[known]] = 1.0
  return out


def aux_targets(parsed: ParsedRhpc) -> tuple[np.ndarray, np.ndarray]:
  """Targets and masks of the knowledge predictor, each float32 [N, AUX_DIM].

  Per variable, in its AUX_SLICES columns: CE targets are one-hot over known categories; MSE
  targets the ordinal (categorical) or standardised value (continuous) in one column; BCE
  targets one bit per label. The mask is 1 where the target is known and enters the loss.
  """
  n = len(parsed)
  targets = np.zeros((n, AUX_DIM), np.float32)
  masks = np.zeros((n, AUX_DIM), np.float32)
  rows = np.arange(n)
  for j, (var, (start, stop)) in enumerate(zip(VARIABLES, AUX_SLICES)):
    code = parsed.codes[:, j]
    known = code != UNKNOWN
    if var.aux_loss == AuxLoss.CE:
      targets[rows[known], start + code[known]] = 1.0
      masks[known, start:stop] = 1.0
    elif var.aux_loss == AuxLoss.BCE:
      bits = (code[:, None] >> np.arange(var.num_categories)) & 1
      targets[:, start:stop] = np.where(known[:, None], bits, 0)
      masks[known, start:stop] = 1.0
    elif var.kind == Kind.CONTINUOUS:
      targets[known, start] = (parsed.values[known, j] - var.center) / var.scale
      masks[known, start] = 1.0
    else:
      ordinals = np.array([np.nan if c.ordinal is None else c.ordinal for c in var.categories],
                          np.float32)
      value = np.where(known, ordinals[np.maximum(code, 0)], np.nan)
      ok = np.isfinite(value)
      targets[ok, start] = value[ok]
      masks[ok, start] = 1.0
  return targets, masks


def attribution_labels() -> tuple[str, ...]:
  """Labels for per-variable attributions, in input order."""
  return tuple(v.label for v in VARIABLES)


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
