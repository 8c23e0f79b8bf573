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

import dataclasses
import enum
import math

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

# The three trained models under the paper's names (configs, workdirs, reports; MRP is their
# ensemble): model name -> the batch key of its images (None: no images).
IMAGE_KEYS = {"rhpc": None, "iMGrhpc": "mg", "iMRrhpc": "mri"}
MODEL_NAMES = tuple(IMAGE_KEYS)


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
    ambiguous: spellings real tables use that name more than one category ('HER2 positive':
      ER+/HER2+ or ER-/HER2+; 'T1': 1A, 1B, 1C or 1mi). They parse to Unknown and are counted
      as unparsed (the manifest, the private unparsed_values.csv), never filed under one of the
      categories: that would give the model a precision the record does not have.
    aux_loss: the knowledge predictor's loss for this variable (its weight is a training
      hyperparameter: configs/common.py, loss.aux_weights).
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
  categories: tuple[Category, ...] = ()
  ambiguous: tuple[str, ...] = ()
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
# 469 pCR, 938 non-pCR) wherever the table has the variable. The auxiliary loss weights are
# training hyperparameters, in configs/common.py.
# --------------------------------------------------------------------------------------------
_ = _c
VARIABLES: tuple[Variable, ...] = (
    # ---- radiological ------------------------------------------------------------------------
    Variable(
        "location", "Tumour location (ICD-O)", Group.RADIOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE,
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
        "laterality", "Laterality", Group.RADIOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
        categories=(
            _("left", 241, 477, "l", "lt", "links", "sinistra"),
            _("right", 228, 459, "r", "rt", "rechts", "dextra"),
        ),
        columns=("laterality", "lateral", "side", "tumor side", "tumour side"),
    ),
    Variable(
        "focality", "Focality", Group.RADIOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
        categories=(
            _("unifocal", 312, 449, "uni", "single", "solitary", "uni focal"),
            _("multifocal", 0, 36, "multi", "multicentric", "multi focal"),
            _("satellite lesion", 131, 377, "satellite", "satellites"),
        ),
        columns=("focality", "multifocal", "multifocality"),
    ),
    Variable(
        "density", "Mammographic density (BI-RADS)", Group.RADIOLOGICAL, Kind.CATEGORICAL,
        AuxLoss.CE,
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
        AuxLoss.CE,
        categories=(
            _("Luminal A", 16, 397, "luminal a", "lum a", "luma"),
            _("Luminal B-HER2neg", 35, 182, "luminal b", "luminal b her2n", "luminal b her2neg",
              "luminal b her2 negative", "lum b", "lumb"),
            _("Luminal-like ER+/HER2-", 51, 579, "luminal like", "er+/her2-", "er pos her2 neg",
              "hr+/her2-", "er positive her2 negative", "hr positive her2 negative"),
            _("Triple positive ER+/HER2+", 126, 155, "triple positive", "er+/her2+",
              "hr+/her2+", "er positive her2 positive", "hr positive her2 positive",
              "luminal b her2 positive", "luminal b her2pos", "luminal her2"),
            _("HER2-enriched ER-/HER2+", 113, 27, "her2 enriched", "her2-enriched",
              "er-/her2+", "hr-/her2+", "er negative her2 positive",
              "hr negative her2 positive", "non luminal her2"),
            _("Triple negative", 177, 176, "triple negative", "tnbc", "tn", "er-/her2-",
              "hr-/her2-", "basal", "basal like"),
        ),
        # HER2 status alone leaves the ER status open (and 'HER2-' normalises to 'her2').
        ambiguous=("her2 positive", "her2+", "her2pos", "her2", "her2 pos"),
        columns=("molecular subtype", "subtype", "mol subtype", "receptor subtype"),
    ),
    Variable(
        "histology", "Tumour histology", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
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
        "tumour_type", "Tumour type", Group.HISTOPATHOLOGICAL, Kind.CATEGORICAL, AuxLoss.CE,
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
        AuxLoss.CE,
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
        categories=(
            _("yes", 156, 474, "y", "present", "1", "true", "dcis", "positive", "pos"),
            _("no", 305, 460, "n", "absent", "0", "false", "negative", "neg"),
        ),
        columns=("in situ", "in situ component", "insitu", "dcis component"),
    ),
    # ---- personal ----------------------------------------------------------------------------
    Variable(
        "age", "Age", Group.PERSONAL, Kind.CONTINUOUS, AuxLoss.MSE,
        columns=("age", "age at diagnosis", "age years", "age at screening", "patient age"),
        center=50.0, scale=10.0, valid_range=(15.0, 105.0), unit="years",
        # Table 2 bins age at 50: <=50 310 pCR / 511 non-pCR; >50 159 / 427.
        counts_source="table2 (binned at 50 years)",
    ),
    Variable(
        "sex", "Sex", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE,
        categories=(
            _("female", 468, 936, "f", "woman", "w", "vrouw", "v"),
            _("male", 1, 2, "m", "man"),
        ),
        columns=("sex", "gender"),
    ),
    Variable(
        "weight", "Weight", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.MSE,
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
        "menarche_age", "Age at menarche", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.MSE,
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
        "menopause", "Menopausal status", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE,
        categories=(
            _("post", 114, 299, "yes", "y", "postmenopausal", "post menopausal", "1", "true"),
            _("pre", 354, 637, "no", "n", "premenopausal", "pre menopausal", "peri",
              "perimenopausal", "0", "false"),
        ),
        columns=("menopause", "menopausal status", "menopausal"),
    ),
    *(
        Variable(
            gene.lower(), f"{gene} mutation", Group.PERSONAL, Kind.CATEGORICAL, AuxLoss.CE,
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
        "ct", "Clinical T stage (cT)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE,
        categories=(
            _("1B", 14, 15, "t1b", "ct1b", ordinal=1.0),
            _("1C", 108, 175, "t1c", "ct1c", ordinal=1.5),
            _("2", 270, 537, "t2", "ct2", ordinal=2.0),
            _("3", 54, 175, "t3", "ct3", ordinal=3.0),
            _("4A", 0, 1, "t4a", "ct4a", ordinal=4.0),
            _("4B", 5, 18, "t4b", "ct4b", ordinal=4.3),
            _("4D", 5, 7, "t4d", "ct4d", ordinal=4.6),
            _("IS", 3, 3, "tis", "ctis", ordinal=0.0),
            _("other", 10, 7, "tx", "ctx", "t0", "ct0", "x"),
        ),
        # Unspecified T1 / T4 (the table's substages 1B, 1C / 4A, 4B, 4D).
        ambiguous=("1", "t1", "ct1", "4", "t4", "ct4"),
        columns=("ct", "clinical t", "t stage", "clinical t stage", "ct stage"),
    ),
    Variable(
        "cn", "Clinical N stage (cN)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE,
        categories=(
            _("0", 187, 277, "n0", "cn0", ordinal=0.0),
            _("0IS", 0, 3, "n0is", "cn0is", "n0(i+)", "n0i+", ordinal=0.2),
            _("0S", 45, 57, "n0s", "cn0s", "n0(sn)", "n0sn", ordinal=0.1),
            _("1", 152, 425, "n1", "cn1", ordinal=1.0),
            _("1MS", 4, 9, "n1ms", "cn1ms", "n1mi", "n1mi(sn)", ordinal=0.8),
            _("1S", 7, 30, "n1s", "cn1s", "n1(sn)", "n1sn", ordinal=1.0),
            _("2A", 0, 2, "n2a", "cn2a", ordinal=2.0),
            _("2B", 6, 4, "n2b", "cn2b", ordinal=2.3),
            _("3A", 24, 43, "n3a", "cn3a", ordinal=3.0),
            _("3B", 26, 39, "n3b", "cn3b", ordinal=3.3),
            _("3C", 10, 39, "n3c", "cn3c", ordinal=3.6),
            _("other", 8, 10, "nx", "cnx", "x"),
        ),
        # Unspecified N2 / N3 (substages 2A, 2B / 3A, 3B, 3C).
        ambiguous=("2", "n2", "cn2", "3", "n3", "cn3"),
        columns=("cn", "clinical n", "n stage", "clinical n stage", "cn stage"),
    ),
    Variable(
        "cm", "Clinical M stage (cM)", Group.CLINICAL, Kind.CATEGORICAL, AuxLoss.MSE,
        categories=(
            _("0", 451, 884, "m0", "cm0", ordinal=0.0),
            _("1", 14, 51, "m1", "cm1", ordinal=1.0),
        ),
        columns=("cm", "clinical m", "m stage", "clinical m stage", "cm stage"),
    ),
    Variable(
        "therapy", "Neoadjuvant therapy", Group.CLINICAL, Kind.MULTILABEL, AuxLoss.BCE,
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
