"""The README, .ci/run, requirements.txt, pyproject.toml and binder/ tell one consistent story."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
CI = REPO / ".ci" / "run"
VENV_PREFIX = "python3.11 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && "


def readme_commands() -> list[str]:
    """The quickstart commands: lines in the README's fenced blocks that create a venv and install."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if "pip install -r requirements.txt" in line]


def readme_test_command() -> str:
    (command,) = [command for command in readme_commands() if "pytest" in command]
    return command[len(VENV_PREFIX) :]


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a requirements file (names normalised)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
        assert match, f"{path.name}: {line!r} is not pinned as name==version"
        found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_readme_has_exactly_two_quickstart_commands():
    commands = readme_commands()
    assert len(commands) == 2, f"expected two one-line install commands in README, found: {commands}"
    for command in commands:
        assert command.startswith(VENV_PREFIX), f"a quickstart command must start from a fresh venv: {command}"
    tail = sorted(command[len(VENV_PREFIX) :] for command in commands)
    assert tail[1] == "python scripts/run_tutorials.py"
    assert tail[0].startswith("FACELIB_SMOKE=1 python -m pytest ") and "--nbval-lax" in tail[0] and "notebooks/" in tail[0]
    assert "jupyter lab notebooks/" in README
    assert "https://mybinder.org/v2/gh/" in README and "https://mybinder.org/badge_logo.svg" in README


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    script = CI.read_text(encoding="utf-8")
    assert os.access(CI, os.X_OK), ".ci/run must be executable"
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    # the command lines themselves (not a comment or an echo that mentions them)
    lines = [line.strip() for line in script.splitlines() if not line.lstrip().startswith(("#", "echo"))]
    test_command = readme_test_command()
    assert any(line == test_command or line.startswith(test_command + " ||") for line in lines), (
        f".ci/run must run the README's test command exactly: {test_command}"
    )
    assert "pip install -r requirements.txt" in lines
    assert any(re.search(r"-m venv \"?\$venv", line) for line in lines) and "mktemp -d" in script
    subprocess.run(["bash", "-n", str(CI)], check=True)


def test_requirements_pin_cpu_era_torch_and_headless_opencv():
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pinned = pins(REPO / "requirements.txt")
    assert pinned["torch"] == "2.13.0"
    assert "torchvision" not in pinned and not any("torchvision" in line.split("#")[0] for line in requirements)
    major = int(pinned["opencv-python-headless"].split(".")[0])
    assert major < 5, "opencv-python-headless must stay below 5"
    assert "opencv-python" not in pinned, "only the headless OpenCV (no GUI libraries on CI or Binder)"
    assert "-e ." in [line.strip() for line in requirements], "requirements.txt installs facelib itself"
    for needed in ("papermill", "nbval", "ipykernel", "pytest", "jupyterlab", "nbformat"):
        assert needed in pinned, f"{needed} is needed by the README's commands"


def test_every_package_dependency_is_pinned():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = pins(REPO / "requirements.txt")
    for dependency in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", dependency)[0]).lower()
        assert name in pinned, f"pyproject dependency {dependency!r} has no pin in requirements.txt"
    assert any(dep.replace(" ", "").startswith("opencv-python-headless<5") for dep in project["dependencies"])


def test_binder_pins_agree_with_requirements():
    binder = REPO / "binder"
    assert pins(binder / "requirements.txt") == pins(REPO / "requirements.txt")
    lines = [line.strip() for line in (binder / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines, "Binder has no GPU: CPU torch"
    assert "-e ." not in lines, "postBuild installs facelib (requirements are installed before the repo is)"
    assert (binder / "runtime.txt").read_text(encoding="utf-8").strip() == "python-3.11"
    post_build = binder / "postBuild"
    script = post_build.read_text(encoding="utf-8")
    assert os.access(post_build, os.X_OK)
    assert script.startswith("#!/bin/bash\n") and "\nset -e\n" in script
    install = [shlex.split(line) for line in script.splitlines() if line.startswith("pip install")]
    assert install and set(install[0]) >= {"pip", "install", "--no-deps", "-e", "."}


def test_readme_mentions_every_notebook_and_claims_none_that_is_missing():
    mentioned = {}
    for line in README.splitlines():
        for name in re.findall(r"notebooks/(\d\d_[A-Za-z0-9_]+)\.ipynb", line):
            mentioned.setdefault(name, []).append(line)
    existing = {path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for name in existing:
        assert name in mentioned, f"notebooks/{name}.ipynb exists but the README does not mention it"
    for name, lines in mentioned.items():
        if name not in existing:
            assert all("planned" in line for line in lines), (
                f"README presents notebooks/{name}.ipynb, which does not exist; mark it (planned)"
            )


@pytest.mark.parametrize("path", ["README.md", ".ci/run", "binder/postBuild", "binder/requirements.txt"])
def test_no_machine_paths_in_release_files(path):
    text = (REPO / path).read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w.])/(work|root|home|tmp)/", text), f"{path} names a path of one machine"
