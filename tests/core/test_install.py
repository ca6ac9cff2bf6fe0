"""A plain, non-editable ``pip install .`` carries the configs: the installed package runs on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_non_editable_install_finds_its_configs(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build from a copy: the build leaves nothing in the work tree
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "logs", "build", "*.egg-info", "__pycache__", ".cache"),
    )
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "trustml" / "conf" / "train.yaml").is_file()
    assert (target / "trustml" / "conf" / "experiment" / "digits_erm.yaml").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import sys, trustml; sys.argv[0] = 'trustml'; print(trustml.__file__); "
        "from trustml.cli.main import main; main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "debug=fast_dev_run", "trainer.enable_progress_bar=false"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))
    assert list(work.glob("logs/runs/*/results.json"))


def test_the_constraints_file_pins_every_direct_requirement_within_its_range() -> None:
    """``constraints.txt`` (the documented known-good set) pins each requirement of trustml and its extras at a
    version the requirement's range admits, so ``pip install -c constraints.txt -e ".[dev]"`` can resolve."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    checked = 0
    for text in requirements:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == "trustml":
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's '{requirement}'"
        )
        checked += 1
    assert checked >= 20
