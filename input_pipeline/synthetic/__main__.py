"""python -m input_pipeline.synthetic: writes a synthetic hospital export (synthetic/export.py)."""

from input_pipeline import cli
from input_pipeline.synthetic import export

__doc__ = export.__doc__  # what --help prints

cli.run_program(export.define_flags, export.generate)
