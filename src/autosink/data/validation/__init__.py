"""Data validation between the feature store and training: the gate of the ``validate_data`` stage.

- ``features``: per-image features (brightness, contrast, sharpness, colour cast, ROI brightness
  and objectness, saturation, size, readability, 16x16 average hash), cached by path + content hash.
- ``drift``: evidently 0.7 report (DataDriftPreset + DataSummaryPreset) vs. a reference.
- ``checks``: the checks and their thresholds (``validate.checks.*``).
- ``wandb_log``: the summary to wandb (offline unless configured and keyed).
- ``core``: ``validate()`` ties them together and writes every output.
"""

from autosink.data.validation.core import DataValidationError, Paths, failure_message, validate
from autosink.data.validation.features import FEATURES

__all__ = ["DataValidationError", "FEATURES", "Paths", "failure_message", "validate"]
