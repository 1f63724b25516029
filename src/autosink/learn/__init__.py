"""The model: the network, frames and loaders, the base weights, training, evaluation, the
gate's cases, the water benchmark, the decision rule and the ONNX export."""
