"""Deployment: SavedModel, TFLite (float, dynamic, int8) and ONNX export, and prediction."""
