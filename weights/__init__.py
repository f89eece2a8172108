"""Weights: TensorFlow checkpoints (finding, verifying, restoring)."""
