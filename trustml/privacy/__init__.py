"""Differential privacy, the one privacy wing: everything DP lives here, and nothing here imports upward.

- :mod:`~trustml.privacy.options` / :mod:`~trustml.privacy.plugins`: the ``optimizer=dp_sgd|dp_adam`` plugins;
- :mod:`~trustml.privacy.optimizers`: the DP-SGD / DP-Adam torch optimizers (and ``PerSampleGradientOptimizer``);
- :mod:`~trustml.privacy.engine`: the noise plan (sigma from data size, batch size and planned steps, before the
  optimizer is built) and the per-fit accountant attached as an optimizer step hook;
- :mod:`~trustml.privacy.callback`: the Lightning side (budget stop, epsilon logging, checkpointed state);
- :mod:`~trustml.privacy.accounting`, :mod:`~trustml.privacy.mechanism`: Opacus accountants, the Gaussian mechanism;
- :mod:`~trustml.privacy.per_sample` (and ``_layerwise``, ``_vmap``), :mod:`~trustml.privacy.batching`: per-sample
  gradients;
- :mod:`~trustml.privacy.sampling`: Poisson sampling of the training batches;
- :mod:`~trustml.privacy.dp_fedavg`: DP-FedAvg's client-level mechanism (clipping, noise, accounting);
- :mod:`~trustml.privacy.audit`: privacy audits (membership inference, canary exposure).

The package imports nothing eagerly, so that registering the DP plugins stays light.
"""
