"""What the domains' example writers share: the made-up patient fields of example DICOM files, and a new
DICOM dataset to fill.

Each domain writes its own example files for the app (``domains/<name>/examples.py``, through
:meth:`~unimae.domains.base.DomainPlugin.write_examples`). The DICOM ones carry these fields so that one
can check the app never shows them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SYNTHETIC_PATIENT", "new_dicom"]

SYNTHETIC_PATIENT = {"PatientName": "SYNTHETIC^PHANTOM", "PatientID": "UNIMAE-DEMO-0001", "PatientBirthDate": "19000101"}


def new_dicom(sop_class_uid: str, modality: str) -> Any:
    """A pydicom ``Dataset`` with its Part-10 file meta (explicit VR little endian, a new SOP instance UID), its
    SOP class and its modality; the caller adds the patient, the geometry and the pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class_uid
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = modality
    return ds
