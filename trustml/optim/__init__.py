"""Non-private optimizer plugins (``optimizer=adam|adamw|sgd``) and LQF's K-FAC; DP optimizers: trustml.privacy."""
