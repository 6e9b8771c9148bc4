"""Checkpoints: named arrays plus JSON metadata in one `.npz`, written atomically.

Writing goes to a temporary file in the same directory, which is flushed, fsync'ed and
then renamed over the target, so a crash or a kill at any moment leaves either the old
checkpoint or the new one, never half of one. Reading uses ``allow_pickle=False``: a
checkpoint is data, and a file from elsewhere cannot run code.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

_META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def save_checkpoint(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `arrays` and the JSON-serialisable `meta` to `path` atomically."""
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    directory = os.path.dirname(os.path.abspath(path))
    payload = dict(arrays)
    payload[_META_KEY] = np.array(json.dumps(meta))
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by `save_checkpoint`: (arrays, meta)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or not a minissc checkpoint "
                              f"({error}); use an earlier one or start again") from None
    if _META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} has no metadata: not written by minissc")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({error})") from None
    return arrays, meta


def split_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix + '/'``, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: a for name, a in arrays.items() if name.startswith(prefix + "/")}
