"""Fold frozen BN statistics into the convolutions, verify the artifacts, publish them atomically."""
