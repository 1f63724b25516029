"""The Pi-safe core: the episode format, the model card, file helpers and subprocesses.

Everything here imports only the standard library, numpy and OpenCV (tests/test_layers.py):
both the Raspberry Pi and the pipeline load it.
"""
