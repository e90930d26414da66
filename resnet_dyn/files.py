"""Atomic output: every file a job finishes is written whole or not at all."""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# The errors that mean "this folder cannot take our files", as opposed to a bug.
UNWRITABLE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EFBIG: "file too large",
}

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def unwritable_reason(exc: BaseException) -> str | None:
    """Why a write failed, when ``exc`` (or what caused it) is an unwritable-folder error."""
    seen: set[int] = set()  # chains can loop when an exception is re-raised from its wrapper
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            return UNWRITABLE[exc.errno]
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def check_writable(folder: str | os.PathLike) -> str | None:
    """None if ``folder`` can be created and can take a small file, else why not."""
    try:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path / ".write-check", b"resnet_dyn\n" * 512).unlink()
    except OSError as exc:
        return UNWRITABLE.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would have made it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; tensors and arrays become lists."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)
    return write_bytes_atomic(path, (text + "\n").encode())


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as a compressed ``.npz``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
