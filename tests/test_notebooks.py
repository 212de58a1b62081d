"""Notebooks: the committed files follow the policy, and scripts/run_tutorials.py runs them.

Executing the notebooks is nbval's job (``--nbval-lax notebooks/`` in the test command): each
notebook runs once, in smoke mode, and cells marked ``# NBVAL_CHECK_OUTPUT`` are compared with
their committed outputs. This module never executes the committed notebooks again; it reads them.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUNNER = REPO / "scripts" / "run_tutorials.py"
MAX_BYTES = 5 * 1024 * 1024
#: A notebook may define a helper of at most this many lines after its ``def`` line; longer code
#: belongs in the package, where it is tested and shared.
MAX_FUNCTION_LINES = 6
#: Dunder names a notebook may read; every other name starting with "_" is private.
PUBLIC_DUNDERS = {"__version__", "__name__", "__file__", "__doc__", "__class__"}


def _code(cell) -> str:
    """A cell's source as Python: IPython magics and shell escapes (``%``, ``!``) dropped."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def _defines_model_or_loss(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            if any(base.split(".")[-1] == "Module" for base in bases):
                found.append(f"class {node.name}({', '.join(bases)})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "loss" in node.name.lower():
            found.append(f"def {node.name}")
    return found


def _private_names(tree: ast.AST) -> list[str]:
    """Private names the code reaches for: ``x._name`` / ``x.__getitems__`` and ``from m import _name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and node.attr not in PUBLIC_DUNDERS:
            found.append(f"{ast.unparse(node)} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom):
            found += [f"from {node.module} import {alias.name}" for alias in node.names if alias.name.startswith("_")]
    return found


def _long_functions(tree: ast.AST) -> list[str]:
    return [f"def {node.name} ({node.end_lineno - node.lineno} lines after its def)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno > MAX_FUNCTION_LINES]


def notebook_problems(path: Path) -> list[str]:
    """Every way the notebook at ``path`` breaks the policy (empty list: it follows it)."""
    problems = []
    size = path.stat().st_size
    if size > MAX_BYTES:
        problems.append(f"file is {size / 2**20:.1f} MB, the cap is {MAX_BYTES / 2**20:.0f} MB (lower figure dpi/size)")
    notebook = nbformat.read(path, as_version=4)
    if notebook.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append(f"kernelspec is {notebook.metadata.get('kernelspec', {}).get('name')!r}, expected 'python3'")

    # nbclient skips empty code cells, so only cells with code carry an execution count
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    counts = [cell.execution_count for cell in code_cells]
    if counts != list(range(1, len(code_cells) + 1)):
        problems.append(f"not executed top to bottom in one run: execution counts {counts}, expected 1..{len(code_cells)}")
    for cell in code_cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"cell [{cell.execution_count}] stored an error: {output.ename}: {output.evalue}")
        if cell.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT") and not cell.get("outputs"):
            problems.append(f"cell [{cell.execution_count}] is marked NBVAL_CHECK_OUTPUT but stores no output to compare")

    parameter_cells = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(parameter_cells) != 1:
        problems.append(f"needs exactly one cell tagged 'parameters', found {len(parameter_cells)}")
    else:
        cell = notebook.cells[parameter_cells[0]]
        assigned = {
            target.id
            for node in ast.walk(ast.parse(_code(cell)))
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        missing = {"SMOKE", "STEPS"} - assigned
        if missing:
            problems.append(f"the parameters cell does not set {sorted(missing)}")
        later = "\n".join(_code(c) for c in notebook.cells[parameter_cells[0] + 1 :] if c.cell_type == "code")
        if "is_smoke()" not in later:
            problems.append("no cell after the parameters cell reads facelib.is_smoke(), so FACELIB_SMOKE=1 is ignored")

    source = "\n".join(_code(cell) for cell in code_cells)
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        return problems + [f"code cells do not parse as Python: {err}"]
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    if not any(
        (isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "facelib" for alias in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "facelib")
        for node in imports
    ):
        problems.append("does not import facelib")
    if "set_seed(" not in source:
        problems.append("never calls facelib.set_seed")
    for definition in _defines_model_or_loss(tree):
        problems.append(f"defines {definition}: models and losses belong in the facelib package")
    for definition in _long_functions(tree):
        problems.append(f"defines {definition}: functions over {MAX_FUNCTION_LINES} lines belong in the facelib package")
    for name in _private_names(tree):
        problems.append(f"uses the private name {name}: notebooks use the package's public API")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_committed_notebook_follows_policy(path):
    problems = notebook_problems(path)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------- the checker itself


def _tiny_notebook(*cells, parameters: str = "SMOKE = None\nSTEPS = None"):
    notebook = new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    parameter_cell = new_code_cell(parameters)
    parameter_cell.metadata["tags"] = ["parameters"]
    setup = new_code_cell("import facelib\nfacelib.set_seed(0)")
    smoke = new_code_cell("SMOKE = facelib.is_smoke() if SMOKE is None else SMOKE")
    notebook.cells = [new_markdown_cell("# A tutorial"), setup, parameter_cell, smoke, *cells]
    return notebook


def _executed(notebook):
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    for count, cell in enumerate(code, start=1):
        cell.execution_count = count
    return notebook


def test_policy_accepts_a_good_notebook(tmp_path):
    path = tmp_path / "00_good.ipynb"
    nbformat.write(_executed(_tiny_notebook(new_code_cell("print(SMOKE)"), new_code_cell(""))), path)
    assert notebook_problems(path) == []


def test_policy_catches_each_violation(tmp_path):
    broken = new_code_cell("raise ValueError('boom')")
    broken.outputs = [new_output("error", ename="ValueError", evalue="boom", traceback=[])]
    model = new_code_cell(
        "import torch.nn as nn\nclass Net(nn.Module):\n    pass\ndef my_loss(a, b):\n    return a - b"
    )
    unchecked = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")  # marked, but no stored output
    private = new_code_cell("from facelib.data import SynthFaces, _hidden\nitems = SynthFaces().__getitems__([0])\n"
                            "def long_helper(x):\n" + "    x = x + 1\n" * 7 + "    return x")
    huge = new_code_cell("print('x' * 6_000_000)")
    huge.outputs = [new_output("stream", name="stdout", text="x" * (MAX_BYTES + 1))]
    notebook = _executed(_tiny_notebook(broken, model, unchecked, private, huge, parameters="SMOKE = None"))
    huge.execution_count = 9  # run out of order
    notebook.metadata["kernelspec"]["name"] = "other"
    path = tmp_path / "01_bad.ipynb"
    nbformat.write(notebook, path)
    report = "\n".join(notebook_problems(path))
    for expected in (
        "cap is 5 MB",
        "kernelspec is 'other'",
        "not executed top to bottom",
        "stored an error: ValueError: boom",
        "stores no output to compare",
        "does not set ['STEPS']",
        "class Net(nn.Module)",
        "def my_loss",
        "private name SynthFaces().__getitems__ (line",
        "private name from facelib.data import _hidden",
        "def long_helper (8 lines after its def)",
    ):
        assert expected in report, f"{expected!r} missing from:\n{report}"

    bare = new_notebook(cells=[new_code_cell("import numpy", execution_count=1)])
    nbformat.write(bare, path)
    report = "\n".join(notebook_problems(path))
    for expected in ("exactly one cell tagged 'parameters'", "does not import facelib", "never calls facelib.set_seed"):
        assert expected in report


# ---------------------------------------------------------------------------- scripts/run_tutorials.py


def _run_tutorials(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FACELIB_SMOKE"}
    return subprocess.run(
        [sys.executable, str(RUNNER), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_run_tutorials_executes_reports_and_fails(tmp_path):
    folder, out = tmp_path / "notebooks", tmp_path / "build"
    folder.mkdir()
    (folder / "data.txt").write_text("found")
    report = new_code_cell(
        "import os\n"
        "print('SMOKE', SMOKE, 'STEPS', STEPS, 'env', os.environ.get('FACELIB_SMOKE'), 'file', open('data.txt').read())"
    )
    nbformat.write(_tiny_notebook(report), folder / "00_ok.ipynb")
    nbformat.write(_tiny_notebook(new_code_cell("raise RuntimeError('deliberate failure')")), folder / "01_fails.ipynb")
    nbformat.write(_tiny_notebook(), folder / "scratch.ipynb")  # not NN_*: never run

    result = _run_tutorials("--smoke", "--steps", "7", "--notebooks", str(folder), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("notebook ") :].splitlines()
    assert table[0].split() == ["notebook", "seconds", "status"]
    assert table[1].split()[0] == "00_ok.ipynb" and table[1].split()[2] == "ok"
    assert table[2].split()[0] == "01_fails.ipynb" and "FAILED" in table[2] and "RuntimeError" in table[2]
    assert sorted(path.name for path in out.iterdir()) == ["00_ok.ipynb", "01_fails.ipynb"]
    executed = nbformat.read(out / "00_ok.ipynb", as_version=4)
    printed = "".join(output.get("text", "") for output in executed.cells[-1].outputs)
    # papermill -p SMOKE True / STEPS 7, FACELIB_SMOKE=1 in the kernel, run inside the notebook's folder
    assert printed.strip() == "SMOKE True STEPS 7 env 1 file found"
    assert "raise" in nbformat.read(folder / "01_fails.ipynb", as_version=4).cells[-1].source  # input untouched
    assert nbformat.read(folder / "00_ok.ipynb", as_version=4).cells[-1].outputs == []

    only = _run_tutorials("--only", "0", "--notebooks", str(folder), "--out", str(out / "only"), cwd=tmp_path)
    assert only.returncode == 0, only.stdout + only.stderr
    assert [path.name for path in (out / "only").iterdir()] == ["00_ok.ipynb"]
    executed = nbformat.read(out / "only" / "00_ok.ipynb", as_version=4)
    printed = "".join(output.get("text", "") for output in executed.cells[-1].outputs)
    assert printed.strip() == "SMOKE False STEPS None env None file found"  # default mode: nothing injected


def test_run_tutorials_rejects_unknown_and_empty_selections(tmp_path):
    (tmp_path / "notebooks").mkdir()
    empty = _run_tutorials("--notebooks", str(tmp_path / "notebooks"), cwd=tmp_path)
    assert empty.returncode == 1 and "no NN_*.ipynb notebooks found" in empty.stderr
    nbformat.write(_tiny_notebook(), tmp_path / "notebooks" / "00_a.ipynb")
    unknown = _run_tutorials("--only", "00,07", "--notebooks", str(tmp_path / "notebooks"), cwd=tmp_path)
    assert unknown.returncode != 0 and "no notebook numbered 07" in unknown.stderr and "00_a.ipynb" in unknown.stderr


def test_kernel_check_tells_this_python_from_another():
    spec = importlib.util.spec_from_file_location("run_tutorials", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    here = str(Path(sys.executable).parent)
    assert runner.runs_this_python(["python", "-m", "ipykernel_launcher"])
    assert runner.runs_this_python([os.path.join(here, "python3"), "-m", "ipykernel_launcher"])
    assert not runner.runs_this_python([os.path.join(os.sep, "elsewhere", "bin", "python3"), "-m", "ipykernel_launcher"])
