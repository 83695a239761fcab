"""rsis: recurrent referring instance segmentation (RRIS), reproducible end to end."""

__version__ = "0.1.0"
