"""Data stage: the refer-layout reader, the generated demo dataset and the HDF5 cache."""
