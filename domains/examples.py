"""What the domains' example writers share: the made-up patient fields of example DICOM files.

Each domain writes its own example files for the app (``domains/<name>/examples.py``, through
:meth:`~unimae.domains.base.DomainPlugin.write_examples`). The DICOM ones carry these fields so that one
can check the app never shows them.
"""

from __future__ import annotations

__all__ = ["SYNTHETIC_PATIENT"]

SYNTHETIC_PATIENT = {"PatientName": "SYNTHETIC^PHANTOM", "PatientID": "UNIMAE-DEMO-0001", "PatientBirthDate": "19000101"}
