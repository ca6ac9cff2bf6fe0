"""Package layout: the ``trustml`` package plus the top-level ``conf/`` tree shipped as ``trustml.conf``.

All metadata lives in pyproject.toml; this file only maps ``conf/`` into the package so that a plain
(non-editable) ``pip install .`` carries the Hydra configs.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["trustml", "trustml.*"]), "trustml.conf"],
    package_dir={"trustml.conf": "conf"},
)
