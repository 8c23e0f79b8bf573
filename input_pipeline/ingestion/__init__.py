"""Ingestion: from an export's files to one patient's preprocessed arrays.

DICOM discovery and reading (dicom_scan, dce_select, mammogram_view, dicom_io), the MRI and
mammogram preprocessing (mri, mammogram), what a patient's sources are (patient), and the layouts
of real exports (layouts/).
"""
