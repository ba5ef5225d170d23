"""Files in and out: images (NIfTI, NRRD, MHA, DICOM series, DIR-Lab raw), landmark files,
the DIR-Lab case table, and the paths of the bundled resources (model and sample CT).

Imports: ``core`` only.
"""
