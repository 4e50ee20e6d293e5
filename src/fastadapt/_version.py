"""The version of this fastadapt, written into exports and compared when they are loaded."""

__version__ = "0.1.0"
