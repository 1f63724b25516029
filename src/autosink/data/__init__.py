"""Episodes to training data: extraction, sparse-to-dense labels, the feature store, the
session split and data validation."""
