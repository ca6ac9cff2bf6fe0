"""Method plugins: training objectives as LightningModules over a model from the ``model`` group."""
