"""hipnode: a DICOM node that runs hip-radiograph AI models and returns SR + SC results."""

__version__ = "0.1.0"
