"""Hydra configs of trustml (the top-level ``conf/`` folder, installed as ``trustml.conf``)."""
