"""Execute every tutorial notebook headless and report how each one went.

    python scripts/run_tutorials.py              # default mode: what a reader runs (minutes)
    python scripts/run_tutorials.py --smoke      # CI mode: each notebook in seconds
    python scripts/run_tutorials.py --only 00,01 # a subset, by number
    python scripts/run_tutorials.py --steps 20000 --only 02   # "full" mode: paper-scale training

Each ``notebooks/NN_*.ipynb`` runs with papermill on the ``python3`` kernel, in the
``notebooks/`` folder (as a reader's JupyterLab would), and its executed copy is
written to ``build/notebooks/``; the committed notebooks are never modified. A table of
notebook / seconds / status is printed at the end, and the exit status is non-zero
if any notebook failed or none was found.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL = "python3"


def runs_this_python(argv: list[str]) -> bool:
    """Whether a kernelspec's command starts this environment's interpreter.

    jupyter_client swaps a bare ``python``/``python3`` for the running interpreter; an absolute
    path must sit in this environment's ``bin`` folder (symlinks are not followed: a virtual
    environment's python is a link to the base interpreter, which lacks the venv's packages).
    """
    command = argv[0]
    if command in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        return True
    return Path(os.path.abspath(command)).parent == Path(os.path.abspath(sys.executable)).parent


def ensure_kernel(name: str = KERNEL) -> None:
    """Make the ``python3`` kernel run this interpreter, the one with facelib installed.

    ipykernel's wheel puts the spec into the environment (and jupyter_client falls back to
    this interpreter when there is none), so this is normally a no-op. When the spec is
    missing or runs another Python, this environment's own is installed (``--sys-prefix``).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def current():
        try:
            return KernelSpecManager().get_kernel_spec(name).argv
        except NoSuchKernel:
            return None

    argv = current()
    if argv is not None and runs_this_python(argv):
        return
    print(f"Jupyter kernel {name!r} is {'missing' if argv is None else 'another Python: ' + argv[0]}; "
          f"installing this environment's ({sys.executable})", flush=True)
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name], check=True)
    argv = current()
    if argv is None or not runs_this_python(argv):
        raise SystemExit(
            f"the Jupyter kernel {name!r} still runs {argv and argv[0]}, not {sys.executable}: "
            "a kernelspec on JUPYTER_PATH shadows this environment's; unset JUPYTER_PATH or remove that spec"
        )


def find_notebooks(folder: Path, only: str | None) -> list[Path]:
    """``NN_*.ipynb`` files in ``folder``, sorted; ``only`` = comma-separated numbers ("00,01")."""
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {number.strip().zfill(2) for number in only.split(",") if number.strip()}
        notebooks = [path for path in notebooks if path.name[:2] in wanted]
        missing = wanted - {path.name[:2] for path in notebooks}
        if missing:
            available = ", ".join(path.name for path in sorted(folder.glob("[0-9][0-9]_*.ipynb"))) or "none"
            raise SystemExit(f"--only: no notebook numbered {', '.join(sorted(missing))} in {folder} (available: {available})")
    return notebooks


def relative_paths(executed: Path) -> None:
    """Papermill records where it read and wrote the notebook; keep those paths relative to the
    repository, so a committed notebook names no folder of the machine that ran it."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    recorded = notebook.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if recorded.get(key):
            path = Path(recorded[key]).resolve()
            recorded[key] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    nbformat.write(notebook, executed)


def run_notebook(notebook: Path, out_dir: Path, parameters: dict) -> tuple[float, str]:
    """Execute one notebook with papermill; return (seconds, status)."""
    import papermill

    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(out_dir / notebook.name),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(notebook.parent),
            progress_bar=False,
        )
        status = "ok"
        relative_paths(out_dir / notebook.name)
    except papermill.PapermillExecutionError as err:
        status = f"FAILED in cell [{err.exec_count}]: {err.ename}: {err.evalue}".splitlines()[0][:160]
    except Exception as err:  # noqa: BLE001 - a broken kernel or notebook file is a failure to report, not a crash
        status = f"FAILED: {type(err).__name__}: {err}".splitlines()[0][:160]
    return time.perf_counter() - start, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="smoke mode: FACELIB_SMOKE=1 and papermill -p SMOKE True")
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,01")
    parser.add_argument("--steps", type=int, help="papermill -p STEPS N: override training steps (full mode)")
    parser.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="folder of NN_*.ipynb (default: notebooks/)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "notebooks", help="executed copies go here (default: build/notebooks/)")
    args = parser.parse_args(argv)

    notebooks = find_notebooks(args.notebooks, args.only)
    if not notebooks:
        print(f"no NN_*.ipynb notebooks found in {args.notebooks}", file=sys.stderr)
        return 1
    parameters = {}
    if args.smoke:
        parameters["SMOKE"] = True
        os.environ["FACELIB_SMOKE"] = "1"  # the kernel inherits it, so code outside the notebook sees it too
    if args.steps is not None:
        parameters["STEPS"] = args.steps
    # inside a virtual environment, prefer its kernelspec over one in the user's home
    os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")
    ensure_kernel()
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for notebook in notebooks:
        print(f"running {notebook.name} ...", flush=True)
        seconds, status = run_notebook(notebook, args.out, parameters)
        print(f"  {status} ({seconds:.1f} s)", flush=True)
        results.append((notebook.name, seconds, status))

    width = max(len("notebook"), *(len(name) for name, _, _ in results))
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for name, seconds, status in results:
        print(f"{name:<{width}}  {seconds:>8.1f}  {status}")
    failed = sum(status != "ok" for _, _, status in results)
    print(f"\n{len(results) - failed}/{len(results)} notebooks ran without error; executed copies in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
