"""Check that Binder can build this repository: the pins in binder/requirements.txt agree with
the environment repo2docker installs them into.

    python binder/check.py            # from the repository root; needs Python 3.11 and PyPI

What repo2docker does with this folder (read from the Dockerfile ``repo2docker --no-build`` writes):
it creates its base conda environment ("notebook": Python from runtime.txt, JupyterLab, Notebook,
Jupyter Server, JupyterHub's single-user server, ipywidgets, at the versions of a lock file shipped
inside the repo2docker package), then runs ``pip install -r binder/requirements.txt`` into that
SAME environment (``KERNEL_PYTHON_PREFIX`` is ``NB_PYTHON_PREFIX`` when runtime.txt asks for a
Python the base environment has), then ``binder/postBuild``.

pip upgrades what binder/requirements.txt names, but it does not re-check the base packages it
leaves alone: pinning jupyterlab 4.6 while the base keeps notebook 7.4 (which requires
``jupyterlab<4.5``) gives a broken server. So this script:

1. installs jupyter-repo2docker into a throwaway venv under build/ (not the project's venv),
2. runs ``repo2docker --no-build`` and checks the Dockerfile installs binder/requirements.txt
   with the base environment's pip, and which lock file it uses,
3. reads every Python package of that lock file and fetches its metadata (``pip install
   --dry-run --no-deps --report``, nothing is installed),
4. fails if a base package that binder/requirements.txt leaves alone requires a version of a
   package that binder/requirements.txt pins which the pin does not satisfy.

An unreachable PyTorch CPU index (binder/requirements.txt names it) would cost pip's retries for
every package; this script sets ``PIP_RETRIES=1`` for its own pip calls.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "binder-check"
# conda-forge names whose PyPI distribution is called differently
CONDA_TO_PYPI = {"brotli-python": "brotli", "jupyterhub-base": "jupyterhub", "nbconvert-core": "nbconvert", "python-fastjsonschema": "fastjsonschema"}
# conda-only metapackages and non-Python packages with a Python-looking build string
NOT_ON_PYPI = {"python", "python_abi", "pip", "jupyterhub-singleuser", "jsonschema-with-format-nongpl",
               "bleach-with-css", "cached-property", "typing-extensions"}


# environment markers of the image: linux-64, CPython of runtime.txt
RUNTIME = (REPO / "binder" / "runtime.txt").read_text(encoding="utf-8").strip().removeprefix("python-")
MARKERS = {"python_version": RUNTIME, "python_full_version": RUNTIME + ".0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PIP_RETRIES": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(command, text=True, capture_output=True, env=environment, **kwargs)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(map(str, command))}\n{result.stderr[-3000:]}")
    return result


def throwaway_venv() -> Path:
    python = BUILD / "venv" / "bin" / "python"
    if not python.exists():
        venv.create(BUILD / "venv", with_pip=True)
    if run([python, "-m", "pip", "list"]).stdout.lower().find("jupyter-repo2docker") < 0:
        print("installing jupyter-repo2docker into", BUILD / "venv")
        run([python, "-m", "pip", "install", "-q", "jupyter-repo2docker", "packaging"])
    return python


def binder_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "binder" / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[normalise(name)] = version
    return pins


PINS = binder_pins()


def dockerfile_lock(python: Path) -> Path:
    """Run repo2docker --no-build; check how it installs binder/requirements.txt; return the lock file it uses."""
    repo2docker = python.parent / "repo2docker"
    # --debug prints the Dockerfile it would build; --no-build stops there (no Docker needed)
    result = run([repo2docker, "--no-build", "--no-run", "--debug", str(REPO)])
    dockerfile = result.stdout + result.stderr
    (BUILD / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    assert "ENV KERNEL_PYTHON_PREFIX=${NB_PYTHON_PREFIX}" in dockerfile, (
        "repo2docker would make a separate kernel environment; this check assumes one shared environment"
    )
    install = [line for line in dockerfile.splitlines() if "binder/requirements.txt" in line and "pip install" in line]
    assert install == ['RUN ${KERNEL_PYTHON_PREFIX}/bin/pip install --no-cache-dir -r "binder/requirements.txt"'], install
    assert "RUN ./binder/postBuild" in dockerfile
    (lock_name,) = set(re.findall(r"(environment\.py-[0-9.]+-linux-64\.lock)", dockerfile.replace("-2e", ".").replace("-2d", "-")))
    assert lock_name == f"environment.py-{RUNTIME}-linux-64.lock", f"{lock_name} is not the base env for Python {RUNTIME}"
    package = Path(run([python, "-c", "import repo2docker, os; print(os.path.dirname(repo2docker.__file__))"]).stdout.strip())
    print(f"Dockerfile ({BUILD / 'Dockerfile'}): base env from {lock_name}, then",
          "pip install -r binder/requirements.txt into the same environment, then binder/postBuild")
    return package / "buildpacks" / "conda" / lock_name


def base_packages(lock_lines: list[str]) -> dict[str, str]:
    """PyPI name -> version of every Python package in the lines of a conda-lock explicit file."""
    found = {}
    for line in lock_lines:
        if not line.startswith("https://"):
            continue
        filename = line.rsplit("/", 1)[1].split("#")[0].removesuffix(".conda").removesuffix(".tar.bz2")
        name, version, build = filename.rsplit("-", 2)
        if name in NOT_ON_PYPI or not re.match(r"py|.*py3\d", build):
            continue  # not a Python distribution (nodejs, openssl...) or a conda-only metapackage
        found[normalise(CONDA_TO_PYPI.get(name, name))] = version
    return found


def requirements_of(report: Path) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, Requires-Dist lines)`` of every distribution in a ``pip --report`` file."""
    return {
        normalise(item["metadata"]["name"]): (item["metadata"]["version"], item["metadata"].get("requires_dist", []))
        for item in json.loads(report.read_text(encoding="utf-8"))["install"]
    }


def emulate_install(base: dict, binder: dict) -> dict[str, str]:
    """The environment after ``pip install -r binder/requirements.txt`` on top of ``base``.

    pip keeps an installed version while it satisfies every requirement on it and installs the
    resolved one otherwise; the base packages binder/requirements.txt does not name are not re-checked.
    """
    wanted: dict[str, list] = {}
    for name, (_, requires) in binder.items():
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(MARKERS):
                wanted.setdefault(normalise(requirement.name), []).append(requirement.specifier)
    final = {name: version for name, (version, _) in base.items()}
    for name, (version, _) in binder.items():
        kept = name in final and name not in PINS and all(s.contains(final[name], prereleases=True) for s in wanted.get(name, []))
        if not kept:
            final[name] = version
    return final


def clashes(environment: dict[str, str], metadata: dict[str, tuple[str, list[str]]]) -> list[str]:
    """``pip check`` on an environment given as ``name -> version`` plus each version's requirements."""
    found = []
    for name, version in environment.items():
        if metadata.get(name, (None,))[0] != version:
            continue  # a conda-only package, or metadata of another version
        for text in metadata[name][1]:
            requirement = Requirement(text)
            dependency = normalise(requirement.name)
            if requirement.marker is not None and not requirement.marker.evaluate(MARKERS):
                continue
            if dependency in environment and not requirement.specifier.contains(environment[dependency], prereleases=True):
                found.append(f"{name} {version} requires {text}, but the image would have {dependency} {environment[dependency]}")
    return found


def main() -> int:
    BUILD.mkdir(parents=True, exist_ok=True)
    python = throwaway_venv()
    lock = dockerfile_lock(python)
    base_versions = base_packages(lock.read_text(encoding="utf-8").splitlines())
    print(f"base env: {len(base_versions)} Python packages, e.g. notebook {base_versions.get('notebook')},",
          f"jupyterlab {base_versions.get('jupyterlab')}")
    # metadata only (pip resolves and reports, installs nothing)
    base_report, binder_report = BUILD / "base-report.json", BUILD / "binder-report.json"
    run([python, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet",
         "--report", base_report, *[f"{name}=={version}" for name, version in base_versions.items()]])
    run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", binder_report, "-r", REPO / "binder" / "requirements.txt"])
    base, binder = requirements_of(base_report), requirements_of(binder_report)
    environment = emulate_install(base, binder)
    upgraded = sorted(name for name in base if environment[name] != base[name][0])
    print(f"pip install -r binder/requirements.txt would replace {len(upgraded)} base packages:", ", ".join(
        f"{name} {base[name][0]}->{environment[name]}" for name in upgraded))
    wrong_pins = [  # torch==2.13.0 is met by 2.13.0+cpu, as pip reads it
        f"{name}=={PINS[name]} (image: {environment.get(name)})"
        for name in PINS
        if name not in environment or not SpecifierSet(f"=={PINS[name]}").contains(environment[name], prereleases=True)
    ]
    problems = clashes(environment, {**base, **binder}) + [f"pin not installed as written: {pin}" for pin in wrong_pins]
    if problems:
        print("binder/requirements.txt clashes with repo2docker's base environment:", *problems, sep="\n  ")
        return 1
    print(f"ok: the image would hold all {len(PINS)} pins of binder/requirements.txt, and its",
          f"{len(environment)} Python packages agree with one another")
    return 0


if __name__ == "__main__":
    sys.exit(main())
