"""bnserve: train, freeze and serve batch-normalised convolutional models."""

__version__ = "0.1.0"
