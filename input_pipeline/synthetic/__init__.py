"""A synthetic hospital export whose truth is known: DICOM studies, a clinical table, labels.

``generate_export`` writes one (``python -m input_pipeline.synthetic --help``); the cohort's
generative model is documented in :mod:`input_pipeline.synthetic.cohort`. ``records`` writes
full-geometry TFRecords directly (no DICOM), for timing the input pipeline.
"""

from input_pipeline.synthetic.export import (
  BROKEN_CASES,
  TRUTH_FILE,
  ExportSummary,
  Rates,
  generate_export,
  generate_patient,
  main,
  patient_id,
)

__all__ = ["BROKEN_CASES", "TRUTH_FILE", "ExportSummary", "Rates", "generate_export",
           "generate_patient", "main", "patient_id"]
