"""Training of batch-normalised conv nets whose BN layers keep EMA shadow statistics.

``bnserve.trainer.data`` imports only NumPy, so input can be validated before TensorFlow is loaded.
"""
