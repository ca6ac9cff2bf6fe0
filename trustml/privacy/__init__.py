"""Differential privacy: per-sample gradients, the Gaussian mechanism, accounting, Poisson sampling, audits.

The DP optimizers themselves live in :mod:`trustml.optim.dp`; privacy audits (membership inference,
canary exposure) in :mod:`trustml.privacy.audit`.
"""

from trustml.privacy.callback import PrivacyAccountantCallback
from trustml.privacy.sampling import PoissonBatchSampler

__all__ = ["PoissonBatchSampler", "PrivacyAccountantCallback"]
