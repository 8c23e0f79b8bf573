"""Pseudonyms and scrubbing: what ``prepare`` writes under --out names no patient.

A pseudonym is an HMAC of the source patient id with a secret key kept outside --out (the key
file is ``prepare.load_key``'s); messages (skip reasons, unused images, warnings) are scrubbed
of the source path, the source patient id, DICOM UIDs and dates before they are written.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path


def pseudonym(key: bytes, patient_key: str) -> str:
  """'P' + 12 hex digits of HMAC-SHA256(key, source id): stable, not invertible without key."""
  return "P" + hmac.new(key, patient_key.encode(), hashlib.sha256).hexdigest()[:12]


_UID = re.compile(r"(?<![\d.])\d+(?:\.\d+){3,}(?![\d.])")
# YYYYMMDD anywhere not inside a longer number: folder names such as '20211120_MR_1' too.
_DATE = re.compile(r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)")


def scrub(text: str, source: Path, patient_key: str, patient_id: str) -> str:
  """Removes what could identify a patient from a message: the source path, the source
  patient id, DICOM UIDs and dates (YYYYMMDD)."""
  text = text.replace(str(source.resolve()), "<source>").replace(str(source), "<source>")
  if patient_key:
    # Where it stands as a word or a name part ('P7/...', 'Breast_MRI_007_post'), not inside
    # one: a short id such as 'C' or '12' would otherwise eat into 'DICOM' or '128 files'.
    text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(patient_key)}(?![A-Za-z0-9])", patient_id,
                  text)
  return _DATE.sub("<date>", _UID.sub("<uid>", text))
