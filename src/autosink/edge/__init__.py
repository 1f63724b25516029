"""The Raspberry Pi side of autosink: camera -> model -> valve controller -> relay.

Nothing here may import torch, pandas or the training pipeline: the Pi has none of them.
This package file deliberately imports nothing, so importing one edge module never drags
in another (``tests/test_edge_devices.py`` checks the import footprint in a subprocess).
"""
