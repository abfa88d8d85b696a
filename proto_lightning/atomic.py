"""Files written whole or not at all: a temporary file beside the target, then a rename.

A write killed halfway leaves only a `.<name>.*.tmp` beside the target, which the next write of
the same target removes. Files and folders get the modes the user's umask gives new files
(`tempfile` makes them private, 0600 / 0700, whatever the umask says).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsync, then rename), removing temporaries a killed earlier
    write of the same `path` left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(path: str | Path, value: Any) -> Path:
    """`torch.save` `value` to `path` atomically (whole or not at all)."""
    import torch  # here, not at the top: the dataset generator uses this module and needs no torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
