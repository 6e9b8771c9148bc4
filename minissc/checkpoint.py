"""Checkpoints: named arrays plus JSON metadata in one `.npz`, written atomically.

Writing goes to a temporary file ``.tmp-*`` in the same directory, which is flushed, fsync'ed
and then renamed over the target, so a crash or a kill at any moment leaves either the old
checkpoint or the new one, never half of one (a kill can leave the temporary file behind;
`remove_temporaries` deletes such leftovers). The run folder's JSON files are written the same
way (`write_text_atomically`). Reading uses ``allow_pickle=False``: a checkpoint is data, and a
file from elsewhere cannot run code.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

_META_KEY = "__meta__"
_TEMPORARY_PREFIX = ".tmp-"
_ZIP_MAGIC = b"PK\x03\x04"  # how an .npz (a zip of .npy files) starts


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def check_writable_folder(folder: str, option: str) -> None:
    """Raise `OSError` if `folder` cannot be created or written into; writes nothing.

    `option` names the setting that gave the folder (e.g. ``"--out"``) in the message.
    """
    if not folder:
        raise ValueError(f"{option} must name a folder, got an empty string")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{option} {folder}: {existing} is a file, not a folder; "
                                 f"choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {folder}: cannot write into {existing} (permission "
                              f"denied or read-only); choose another {option}")


def _write_atomically(path: str, write) -> None:
    """Call ``write(file)`` on a temporary file beside `path`, flush and fsync it, then rename
    it over `path`; on any error (or a KeyboardInterrupt) the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: the folder {directory} does not exist")
    fd, tmp_path = tempfile.mkstemp(prefix=_TEMPORARY_PREFIX, suffix=os.path.splitext(path)[1],
                                    dir=directory)
    try:
        # mkstemp makes the file private (0600); give it what open() would (0666 - umask).
        os.chmod(tmp_path, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def save_checkpoint(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `arrays` (numeric) and the JSON-serialisable `meta` to `path` atomically.

    Everything is checked before the file is touched: a bad array or meta leaves `path` as it was.
    """
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects; a checkpoint holds numeric "
                            f"arrays only (it is read with allow_pickle=False)")
    payload = dict(arrays)
    payload[_META_KEY] = np.array(json.dumps(meta))
    _write_atomically(path, lambda f: np.savez(f, **payload))


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, as `save_checkpoint` does."""
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def remove_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that a writer killed mid-write left in `directory`.

    Only call it while no other process writes there (a run folder belongs to one run).
    Returns the paths removed.
    """
    leftovers = glob.glob(os.path.join(glob.escape(directory), _TEMPORARY_PREFIX + "*"))
    for path in leftovers:
        os.remove(path)
    return leftovers


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by `save_checkpoint`: (arrays, meta)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a folder; give the checkpoint.npz or "
                                f"best.npz inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            raise CheckpointError(f"checkpoint {path} is not an .npz archive: not a minissc "
                                  f"checkpoint")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as error:
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a minissc "
                              f"checkpoint ({error}); it cannot be loaded: train "
                              f"the run again") from None
    if _META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} has no metadata: not written by minissc")
    try:
        meta = json.loads(str(arrays.pop(_META_KEY)))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({error})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has corrupt metadata (not a JSON object)")
    return arrays, meta


def split_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix + '/'``, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: a for name, a in arrays.items() if name.startswith(prefix + "/")}
