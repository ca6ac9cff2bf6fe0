"""trustml: trustworthy-ML techniques as Hydra-composed PyTorch Lightning plugins."""

__version__ = "0.1.0"
