"""Small utilities used across facelib: seeding, device choice, module helpers, atomic writes, folder locks."""
from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA, then MPS, then CPU; pass anything else to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from err


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):  # torch.compile's wrapper
            module = module._orig_mod
        else:
            return module


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``with eval_mode(model):`` the module in eval mode for the block, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def apply_in_batches(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` applied to ``images`` in batches on ``device``, without gradients; float results on the CPU."""
    return torch.cat([fn(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, images.shape[0], batch_size)])


#: The temporary files of :func:`atomic_write_bytes`: ``.<name>.<random>.tmp``.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for an instant)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file, and a crash leaves the old file intact (plus, if
    killed, a ``.<name>.<random>.tmp`` file that ``facelib.checkpoint.clean_folder`` removes).
    The file gets the permissions of a normal ``open()`` (0666 minus the umask), not ``mkstemp``'s
    0600, so a shared install's weights are readable by its other users.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files that killed :func:`atomic_write_bytes` calls left in ``folder``.

    Only for a folder no other process is writing to (hold :func:`lock_folder`); returns the deleted paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [path for path in folder.iterdir() if _TEMPORARY.match(path.name) and path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


class FolderLockedError(RuntimeError):
    """Another process holds the lock of a folder (a run or a weights folder); the message names it."""


LOCK_NAME = ".facelib.lock"
_held_locks: dict[Path, list] = {}  # resolved folder -> [open lock file, depth]


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, what: str = "folder"):
    """Hold an exclusive lock on ``folder`` (``fcntl.flock`` on ``folder/.facelib.lock``) while inside.

    A second process asking for the same folder fails at once with ``FolderLockedError`` naming
    the folder and the holder's PID (written into the lock file). Re-entrant within a process, so
    a CLI that locks its output folder can run a Trainer writing to that same folder. The lock
    dies with the process (the kernel releases it), so a killed run never leaves a stale lock.
    Where ``fcntl`` does not exist (Windows) this does nothing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield
        finally:
            _held_locks[key][1] -= 1
        return
    handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise FolderLockedError(
            f"{folder} is in use by another process (PID {holder}); one {what} per folder: wait for it to "
            "finish or choose another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held_locks[key] = [handle, 1]
    try:
        yield
    finally:
        _held_locks.pop(key)
        handle.close()  # closing releases the flock


def is_smoke() -> bool:
    """True when ``FACELIB_SMOKE=1`` asks notebooks and scripts to shrink to seconds."""
    return os.environ.get("FACELIB_SMOKE", "0").strip().lower() in {"1", "true", "yes"}


#: ``mallopt`` parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_state: str | None = None


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> str:
    """Let glibc keep freed tensor memory for reuse instead of handing it back to the OS.

    The renderer (and CPU training) allocates and frees many tensors of a few MB. With glibc's
    defaults such blocks are returned to the operating system (``munmap``, or trimming the heap
    top) and every new tensor page-faults fresh memory in again, which costs 10-20 % of render
    time on a 2-core machine. This raises the size below which blocks come from the heap to
    ``mmap_threshold`` and lets up to ``trim_threshold`` bytes of free heap stay with the process:
    peak memory is unchanged, but the resident size shrinks back more slowly after a peak.

    The renderer calls this once. Set ``FACELIB_MALLOC=system`` to leave the allocator alone;
    on systems without glibc (macOS, Windows, musl) it does nothing. Returns what happened:
    ``"tuned"``, ``"system"`` (opted out), ``"unavailable"`` or ``"failed"``.
    """
    global _malloc_state
    if _malloc_state is not None:
        return _malloc_state
    choice = os.environ.get("FACELIB_MALLOC", "tuned").strip().lower()
    if choice not in {"tuned", "system"}:
        raise ValueError(f"FACELIB_MALLOC must be 'tuned' or 'system'; got {choice!r}")
    if choice == "system":
        _malloc_state = "system"
        return _malloc_state
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _malloc_state = "unavailable"
        return _malloc_state
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):
        ok = False
    _malloc_state = "tuned" if ok else "failed"
    return _malloc_state
