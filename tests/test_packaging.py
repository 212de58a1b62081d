"""The README, .ci/run, requirements.txt, pyproject.toml and binder/ tell one consistent story."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
#: The install details the README links (GPU, offline mirrors, Binder).
INSTALL = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
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


CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_readme_install_command_gets_cpu_torch():
    # PyPI's Linux torch wheel pulls several GB of nvidia-* wheels; PyTorch's CPU index offers
    # 2.13.0+cpu, which pip prefers to 2.13.0 (a local version sorts above its base version)
    assert CPU_INDEX in requirement_lines(REPO / "requirements.txt"), "requirements.txt must name the CPU wheel index"
    # no "+cpu" in the pin: the CPU index's macOS wheels carry no local version
    assert pins(REPO / "requirements.txt")["torch"] == "2.13.0"
    script = CI.read_text(encoding="utf-8")
    assert "grep -i '^nvidia-'" in script, ".ci/run keeps failing when an nvidia-* package was installed"
    # where the CPU index is unreachable pip retries it for every package (5 retries with back-off,
    # about 8 s each): CI allows one immediate retry, before it installs
    retries = script.index('export PIP_RETRIES="${PIP_RETRIES:-1}"')
    assert retries < script.index("pip install -r requirements.txt")
    assert "PIP_RETRIES=1" in INSTALL and "pip uninstall -y torch && pip install torch==2.13.0" in INSTALL
    assert "docs/install.md" in README


def test_binder_pins_agree_with_requirements():
    binder = REPO / "binder"
    binder_pins = pins(binder / "requirements.txt")
    # Binder's base environment already has notebook; it is pinned to the release that goes with our
    # jupyterlab (notebook 7.N requires jupyterlab 4.N), or pip leaves a notebook that rejects it
    assert binder_pins.pop("notebook").split(".")[:2] == ["7", pins(REPO / "requirements.txt")["jupyterlab"].split(".")[1]]
    assert binder_pins == pins(REPO / "requirements.txt")
    lines = [line.strip() for line in (binder / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert CPU_INDEX in lines, "Binder has no GPU: CPU torch"
    assert "-e ." not in lines, "postBuild installs facelib (requirements are installed before the repo is)"
    assert (binder / "runtime.txt").read_text(encoding="utf-8").strip() == "python-3.11"
    assert "voila" in binder_pins, "the face editor's Binder badge opens notebook 09 under Voila"
    # repo2docker's conventions: it reads these names from binder/ (environment.yml would replace requirements.txt)
    assert {path.name for path in binder.iterdir()} <= {"requirements.txt", "runtime.txt", "postBuild", "check.py"}
    post_build = binder / "postBuild"
    script = post_build.read_text(encoding="utf-8")
    assert os.access(post_build, os.X_OK)
    assert script.startswith("#!/bin/bash\n") and "\nset -e\n" in script
    install = [shlex.split(line) for line in script.splitlines() if line.startswith("pip install")]
    assert install and set(install[0]) >= {"pip", "install", "--no-deps", "-e", "."}


def test_readme_is_short_and_links_every_docs_page():
    """A newcomer reads the README to the end; the measurements and details live in docs/, linked from it."""
    assert len(README.splitlines()) <= 250, f"README.md has {len(README.splitlines())} lines; move details to docs/"
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, f"README.md does not link docs/{page.name}"


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


@pytest.mark.parametrize("path", ["README.md", "docs/install.md", ".ci/run", "binder/postBuild", "binder/requirements.txt"])
def test_no_machine_paths_in_release_files(path):
    text = (REPO / path).read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w.])/(work|root|home|tmp)/", text), f"{path} names a path of one machine"


def load_binder_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("binder_check", REPO / "binder" / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_binder_check_finds_a_base_package_that_our_pins_break():
    """binder/check.py's model of `pip install -r binder/requirements.txt` on repo2docker's base env.

    The incident it guards against: the base env's notebook 7.4.7 requires jupyterlab<4.5, and
    pinning jupyterlab 4.6.6 alone leaves that notebook in place (pip does not re-check it).
    """
    pytest.importorskip("packaging")
    check = load_binder_check()
    base = {
        "notebook": ("7.4.7", ["jupyterlab<4.5,>=4.4.9", "tornado>=6.2.0"]),
        "jupyterlab": ("4.4.9", ["tornado>=6.2.0"]),
        "tornado": ("6.5.2", []),
    }
    only_jupyterlab = {"jupyterlab": ("4.6.6", ["tornado>=6.2.0"]), "tornado": ("6.6.1", [])}
    environment = check.emulate_install(base, only_jupyterlab)
    # jupyterlab is pinned, so replaced; tornado 6.5.2 already satisfies >=6.2.0, so pip keeps it
    assert environment == {"notebook": "7.4.7", "jupyterlab": "4.6.6", "tornado": "6.5.2"}
    assert check.clashes(environment, {**base, **only_jupyterlab}) == [
        "notebook 7.4.7 requires jupyterlab<4.5,>=4.4.9, but the image would have jupyterlab 4.6.6"
    ]
    with_notebook = {**only_jupyterlab, "notebook": ("7.6.5", ["jupyterlab<4.7,>=4.6.6"])}
    environment = check.emulate_install(base, with_notebook)
    assert check.clashes(environment, {**base, **with_notebook}) == []
    # the lock-file reader keeps Python distributions under their PyPI names, and skips the rest
    lock = [
        "@EXPLICIT",
        "https://conda.anaconda.org/conda-forge/noarch/notebook-7.4.7-pyhd8ed1ab_0.conda#e8",
        "https://conda.anaconda.org/conda-forge/noarch/nbconvert-core-7.16.6-pyh29332c3_0.conda#a1",
        "https://conda.anaconda.org/conda-forge/linux-64/tornado-6.5.2-py311h49ec1c0_1.conda#b2",
        "https://conda.anaconda.org/conda-forge/linux-64/nodejs-20.19.5-hf7ee748_0.conda#c3",
        "https://conda.anaconda.org/conda-forge/linux-64/python-3.11.14-hfe2f287_1_cpython.conda#d4",
    ]
    assert check.base_packages(lock) == {"notebook": "7.4.7", "nbconvert": "7.16.6", "tornado": "6.5.2"}


def test_binder_badge_opens_the_repository_named_in_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    urls = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", urls["Repository"])
    assert match, f"[project.urls] Repository must be https://github.com/OWNER/NAME, got {urls['Repository']!r}"
    badges = re.findall(r"\]\((https://mybinder\.org/v2/gh/[^)\s]+)\)", README)
    home = f"https://mybinder.org/v2/gh/{match[1]}/{match[2]}/HEAD"
    # the tutorials in JupyterLab, and the face editor as a Voila app (Voila's server extension path)
    assert badges == [f"{home}?urlpath=lab/tree/notebooks", f"{home}?urlpath=voila/render/notebooks/09_face_editor.ipynb"], (
        f"the Binder badge must open {urls['Repository']} (pyproject.toml's Repository URL); found {badges}"
    )


def test_jupyterlab_instructions_cover_root_and_use_current_option_names():
    section = README.split("### Open the tutorials in JupyterLab", 1)[1].split("\n### ", 1)[0]
    assert "--allow-root" in section and "root" in section.replace("--allow-root", "")
    # Jupyter Server 2 deprecated the ServerApp spelling of the token option for IdentityProvider.token
    skip = {".git", ".venv", "build", "node_modules", ".ipynb_checkpoints", "__pycache__", "runs", ".cache"}
    old = "ServerApp" + ".token"  # split, so this file does not match itself
    for path in REPO.rglob("*"):
        if path.is_file() and not skip & set(path.relative_to(REPO).parts) and path.suffix in {
            ".md", ".py", ".ipynb", ".txt", ".toml", ".cfg", ".sh", ".yml", ".yaml", ""
        }:
            assert old not in path.read_text(encoding="utf-8", errors="replace"), f"{path.relative_to(REPO)} uses {old}"


def test_voila_serves_under_jupyter_server_so_the_binder_urlpath_works():
    """``urlpath=voila/render/...`` needs Voila's server extension, which pip enables with a config file."""
    pytest.importorskip("voila", reason="voila is pinned in requirements.txt")
    config = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "voila.json"
    assert config.is_file(), f"pip installed voila without its server-extension config ({config.name})"
    extensions = json.loads(config.read_text(encoding="utf-8"))["ServerApp"]["jpserver_extensions"]
    assert any(name.startswith("voila") and enabled for name, enabled in extensions.items()), extensions
    assert "voila notebooks/09_face_editor.ipynb" in README


# --------------------------------------------------------------------------- the repository stands alone

#: Folders of one machine (a developer's or CI's), never part of a clone.
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|root|home|tmp|Users|mnt)/")
#: A path that starts by climbing out of the folder it is written in.
CLIMBING_PATH = re.compile(r"(?:\.\./)+[^\s'\"`)\]}>,;]*")
#: A Markdown file named in prose or code (each must be a file of this repository).
MARKDOWN_NAME = re.compile(r"(?<![\w.-])[\w./-]*?([\w-]+\.md)\b")
#: A relative link in a Markdown page: [text](target).
MARKDOWN_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")
#: The paper texts of the workspace this repository was written in ("pap" "ers/": this file
#: must not match itself).
WORKSPACE_FOLDERS = re.compile(r"\b(?:pap" r"ers|shar" r"ed)/")


def tracked_text_files() -> dict[str, str]:
    """``path -> text`` of every file a clone holds (git's list; every file where git is absent), binaries left out."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        paths = [REPO / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "__pycache__", ".ipynb_checkpoints", "runs"}
        paths = [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    texts = {}
    for path in paths:
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            texts[path.relative_to(REPO).as_posix()] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def test_no_tracked_file_names_a_path_outside_the_repository():
    """A fresh clone is all a reader has: every path a file names must lie inside it."""
    texts = tracked_text_files()
    names = {Path(path).name for path in texts}
    problems = []
    for path, text in texts.items():
        folder = (REPO / path).parent
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path}:{number}"
            if MACHINE_PATH.search(line):
                problems.append(f"{where} names a folder of one machine: {line.strip()[:120]}")
            if WORKSPACE_FOLDERS.search(line):
                problems.append(f"{where} names a folder outside the repository: {line.strip()[:120]}")
            for match in CLIMBING_PATH.finditer(line):
                target = (folder / match[0]).resolve()
                if not target.is_relative_to(REPO):
                    problems.append(f"{where}: {match[0]!r} leads outside the repository")
            for name in MARKDOWN_NAME.findall(line):
                if name not in names:
                    problems.append(f"{where} names {name}, which is not a file of the repository")
            if path.endswith(".md"):
                for link in MARKDOWN_LINK.findall(line):
                    target = (folder / link.split("#")[0]).resolve()
                    if not (target.is_relative_to(REPO) and target.exists()):
                        problems.append(f"{where} links to {link}, which is not in the repository")
    assert not problems, "\n".join(problems)
