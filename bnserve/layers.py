"""Public Keras API for your own models: BN with EMA shadow statistics, and the callback that moves them.

from bnserve.layers import ShadowBatchNormalization, ShadowStatistics
"""

from bnserve.trainer.bn import ShadowBatchNormalization, ShadowStatistics

__all__ = ["ShadowBatchNormalization", "ShadowStatistics"]
