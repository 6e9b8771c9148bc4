"""CIFAR-10 and CIFAR-100: finding, checking and loading them, then augmenting batches.

Layouts
-------
``load_cifar(dataset, data_dir)`` looks in ``data_dir`` for, in this order:

1. the extracted python version: ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
   ``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``):
   pickled dicts with bytes keys, ``b"data"`` uint8 N x 3072 (the R, G and B planes of a 32 x 32
   image, each row-major) and ``b"labels"`` (CIFAR-100: ``b"fine_labels"``, ``b"coarse_labels"``);
2. the extracted binary version: ``cifar-10-batches-bin/`` (``data_batch_1.bin`` ..
   ``data_batch_5.bin``, ``test_batch.bin``, ``batches.meta.txt``) or ``cifar-100-binary/``
   (``train.bin``, ``test.bin``, ``fine_label_names.txt``): records of one label byte
   (CIFAR-100: a coarse byte, then a fine byte) followed by the 3072 pixel bytes;
3. the official archives ``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz``,
   ``cifar-100-python.tar.gz``, ``cifar-100-binary.tar.gz``, which hold those folders.

The first one present is used; if it is broken, that is an error (no silent fallback to the
next one). CIFAR-100 is loaded with its 100 fine labels.

Trust
-----
A pickle is a program: loading one may call any function it names. Every pickle is therefore
read with `RestrictedUnpickler`, which admits only the NumPy functions that rebuild arrays, so a
file can produce arrays, lists, dicts, numbers and strings and nothing else. Archives are also
checked against the official md5 sums before use (``verify_md5=False`` skips that for a copy you
trust, e.g. one rebuilt offline); extracted folders cannot be checked that way. Archives are read
in memory with `tarfile`: only the members with the expected names are read, and they must be
regular files. Nothing is ever extracted, so a member named ``../evil`` or a symlink cannot write
anywhere.

Download
--------
When nothing is found and ``download=True``, the python archive is fetched from
``https://www.cs.toronto.edu/~kriz/`` into a temporary ``*.part`` file in ``data_dir``, its md5
is checked (always: the server must send the official file) and only then is it renamed into
place; on any failure the temporary file is removed. Offline, or with ``download=False``, a
`DatasetNotFoundError` says what was looked for, where, and what to download to which path.

Augmentation
------------
As in the baselines (torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip``
before ``Normalize``), `random_crop_flip` works on the uint8 images, so the padding is black
(pixel value 0), and `normalize` comes last.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/"
DOWNLOAD_TIMEOUT = 30  # seconds the server may stay silent before the download is given up

# The md5 sums published on https://www.cs.toronto.edu/~kriz/cifar.html.
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
}

# Per-channel statistics of the training images, for `normalize`. The CIFAR-10 ones are the
# baselines' (spec section 6); the CIFAR-100 ones are those in common use for CIFAR-100.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NORMALIZATION = {"cifar10": (CIFAR_MEAN, CIFAR_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32


class DatasetError(ValueError):
    """A dataset file is present but unusable: wrong md5, truncated, or not in CIFAR format."""


class DatasetNotFoundError(FileNotFoundError):
    """No copy of the dataset in any known layout was found, and none could be downloaded."""


@dataclass
class Cifar:
    """A loaded dataset: uint8 images (N, 3, 32, 32) with R, G, B planes, int64 labels.

    ``classes`` holds the class names (the label indices as strings if the names file is
    missing); ``source`` says which file or folder was read.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Version:
    """One version (python or binary) of a dataset: its archive, and the folder it unpacks to."""

    kind: str  # "python" or "binary"
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_file: str  # the class names; optional


@dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes CIFAR-10 from CIFAR-100 when reading them."""

    title: str
    num_classes: int
    label_key: str  # the labels in a python batch (for CIFAR-100, the fine labels)
    names_key: str  # the class names in the python meta file
    label_bytes: int  # label bytes before the pixels of a binary record; the last is the label
    versions: tuple[Version, Version]  # python first: it is the one downloaded


DATASETS = {
    "cifar10": DatasetSpec(
        "CIFAR-10", 10, "labels", "label_names", 1,
        (Version("python", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                 tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"),
         Version("binary", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                 tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                 "batches.meta.txt"))),
    "cifar100": DatasetSpec(
        "CIFAR-100", 100, "fine_labels", "fine_label_names", 2,
        (Version("python", "cifar-100-python.tar.gz", "cifar-100-python",
                 ("train",), ("test",), "meta"),
         Version("binary", "cifar-100-binary.tar.gz", "cifar-100-binary",
                 ("train.bin",), ("test.bin",), "fine_label_names.txt"))),
}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_cifar(dataset: str, data_dir: str | os.PathLike, download: bool = True,
               verify_md5: bool = True) -> Cifar:
    """Load CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from `data_dir`.

    Looks for the extracted python folder, the extracted binary folder, then the python and
    binary archives (see the module docstring); downloads the python archive into `data_dir`
    if none is there and `download` is true. `verify_md5=False` accepts an archive whose md5
    differs from the official one (a copy you trust). Raises `DatasetError` for a broken file
    and `DatasetNotFoundError` when there is nothing to load.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    data_dir = Path(os.path.abspath(data_dir))
    if data_dir.exists() and not data_dir.is_dir():
        raise DatasetNotFoundError(f"the data folder {data_dir} is a file, not a folder; give "
                                   f"the folder that holds the {spec.title} archive")
    for version in spec.versions:
        folder = data_dir / version.folder
        if folder.is_dir():
            files = _read_folder(folder, version)
            return _parse(spec, version, files, f"{folder}/",
                          f"extracted {version.kind} version in {folder}")
    for version in spec.versions:
        archive = data_dir / version.archive
        if archive.is_file():
            return _load_archive(spec, version, archive, verify_md5)
    version = spec.versions[0]
    archive = data_dir / version.archive
    if not download:
        raise DatasetNotFoundError(_not_found_message(
            spec, data_dir, "and downloading is off (download=False, --no-download)"))
    url = DOWNLOAD_URL + version.archive
    try:
        _download(url, archive, ARCHIVE_MD5[version.archive])
    except OSError as error:
        raise DatasetNotFoundError(
            _not_found_message(spec, data_dir, f"and downloading {url} failed: {error}")) from error
    return _load_archive(spec, version, archive, verify_md5=False,
                         checked="downloaded, md5 verified")


def _not_found_message(spec: DatasetSpec, data_dir: Path, reason: str) -> str:
    looked_for = [f"{data_dir / v.folder}/" for v in spec.versions]
    looked_for += [str(data_dir / v.archive) for v in spec.versions]
    archive = spec.versions[0].archive
    return (f"{spec.title} not found in {data_dir} {reason}. Looked for any of: "
            f"{', '.join(looked_for)}. Download {DOWNLOAD_URL}{archive} (md5 "
            f"{ARCHIVE_MD5[archive]}) and put it at {data_dir / archive}, or give its folder "
            f"with --data-dir; the folder it extracts to ({spec.versions[0].folder}/) works "
            f"too.")


def _load_archive(spec: DatasetSpec, version: Version, archive: Path, verify_md5: bool,
                  checked: str = "") -> Cifar:
    """Check an archive's md5 (if asked to), then read its members without extracting them.

    `checked` says in `Cifar.source` how the md5 was checked when it is not checked here."""
    if verify_md5:
        expected, actual = ARCHIVE_MD5[version.archive], file_md5(archive)
        if actual != expected:
            raise DatasetError(
                f"{archive} has md5 {actual}, but the official {version.archive} has md5 "
                f"{expected}: the file is incomplete, corrupt or not the official one. "
                f"Re-download it, or pass verify_md5=False (--no-verify) if it is a copy you "
                f"trust.")
        checked = "md5 verified"
    files = _read_archive(archive, version)
    return _parse(spec, version, files, f"{archive}:{version.folder}/",
                  f"{version.kind} archive {archive} ({checked or 'md5 not checked'})")


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file as 32 hex digits, read in 1 MiB chunks."""
    md5 = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _read_folder(folder: Path, version: Version) -> dict[str, bytes]:
    """The bytes of each of the version's files that exists in `folder`, by file name."""
    names = version.train_files + version.test_files + (version.names_file,)
    return {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}


def _read_archive(archive: Path, version: Version) -> dict[str, bytes]:
    """The bytes of each of the version's files found in a .tar.gz, by file name.

    One pass over the members; only the expected names are read and they must be regular
    files. Everything else (``../`` paths, links, devices) is skipped and never touches disk.
    """
    names = version.train_files + version.test_files + (version.names_file,)
    wanted = {f"{version.folder}/{name}": name for name in names}
    files = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None:
                    continue
                if not member.isreg():
                    raise DatasetError(f"{archive}: member {member.name} is not a regular file "
                                       f"(a link or a folder); this is not an official archive, "
                                       f"download it again")
                if name in files:
                    raise DatasetError(f"{archive}: member {member.name} appears twice; this is "
                                       f"not an official archive, download it again")
                files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"{archive} is not a readable .tar.gz archive (truncated or corrupt: "
                           f"{error}); delete it and download it again") from error
    return files


def _parse(spec: DatasetSpec, version: Version, files: dict[str, bytes], prefix: str,
           source: str) -> Cifar:
    """Turn the raw files of one version into a `Cifar`; `prefix` + file name locates errors."""
    missing = [name for name in version.train_files + version.test_files if name not in files]
    if missing:
        raise DatasetError(f"{prefix} lacks {', '.join(missing)}: the {spec.title} "
                           f"{version.kind} version is incomplete; extract or download it again")
    read_batch = _read_python_batch if version.kind == "python" else _read_binary_batch
    train = [read_batch(spec, files[name], prefix + name) for name in version.train_files]
    test = [read_batch(spec, files[name], prefix + name) for name in version.test_files]
    names_location = prefix + version.names_file
    if version.names_file not in files:
        classes = [str(label) for label in range(spec.num_classes)]
    elif version.kind == "python":
        classes = _read_python_names(spec, files[version.names_file], names_location)
    else:
        classes = _read_text_names(spec, files[version.names_file], names_location)
    return Cifar(train_images=np.concatenate([images for images, _ in train]),
                 train_labels=np.concatenate([labels for _, labels in train]),
                 test_images=np.concatenate([images for images, _ in test]),
                 test_labels=np.concatenate([labels for _, labels in test]),
                 classes=classes, source=source)


def _read_python_batch(spec: DatasetSpec, raw: bytes, location: str):
    """Images (N, 3, 32, 32) uint8 and int64 labels from one pickled batch."""
    batch = _unpickle_dict(raw, location)
    for key in ("data", spec.label_key):
        if key not in batch:
            raise DatasetError(f"{location}: the pickled dict has no key {key!r} (its keys: "
                               f"{', '.join(map(str, batch))}); this is not a {spec.title} batch; "
                               f"extract or download it again")
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGE_BYTES):
        raise DatasetError(f"{location}: 'data' should be a uint8 array of shape (N, "
                           f"{IMAGE_BYTES}), found {_describe(data)}")
    labels = _check_labels(spec, batch[spec.label_key], len(data), location)
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_binary_batch(spec: DatasetSpec, raw: bytes, location: str):
    """Images (N, 3, 32, 32) uint8 and int64 labels from one file of fixed-size records."""
    record = spec.label_bytes + IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise DatasetError(f"{location}: {len(raw)} bytes is not a whole number of {record}-byte "
                           f"records ({spec.label_bytes} label byte(s) + {IMAGE_BYTES} pixels); "
                           f"the file is truncated or not {spec.title}; extract or download it "
                           f"again")
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = _check_labels(spec, records[:, spec.label_bytes - 1], len(records), location)
    return records[:, spec.label_bytes:].reshape(-1, *IMAGE_SHAPE), labels


def _check_labels(spec: DatasetSpec, labels, count: int, location: str) -> np.ndarray:
    """`labels` as int64, after checking there are `count` of them, each a valid class."""
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{location}: the labels are not a list of integers "
                           f"({error})") from error
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{location}: expected {count} integer labels, one per image, "
                           f"found {_describe(labels)}")
    if count and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(f"{location}: labels must lie in 0..{spec.num_classes - 1}, found "
                           f"{labels.min()}..{labels.max()}; this is not {spec.title}")
    return labels.astype(np.int64)


def _read_python_names(spec: DatasetSpec, raw: bytes, location: str) -> list[str]:
    names = _unpickle_dict(raw, location).get(spec.names_key)
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{location}: expected a list of class names under "
                           f"{spec.names_key!r}, found {_describe(names)}")
    return _check_names(spec, [_text(name) for name in names], location)


def _read_text_names(spec: DatasetSpec, raw: bytes, location: str) -> list[str]:
    lines = raw.decode("utf-8", errors="replace").splitlines()
    return _check_names(spec, [line.strip() for line in lines if line.strip()], location)


def _check_names(spec: DatasetSpec, names: list[str], location: str) -> list[str]:
    if len(names) != spec.num_classes:
        raise DatasetError(f"{location}: expected {spec.num_classes} class names, found "
                           f"{len(names)}")
    return names


def _text(value) -> str:
    """A pickled Python 2 string (bytes under ``encoding="bytes"``) or a str, as str."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# Pickles: NumPy arrays only
# --------------------------------------------------------------------------------------------


def _numpy_array_globals() -> dict[tuple[str, str], object]:
    """The callables that NumPy's pickles of arrays, dtypes and scalars name, by (module, name).

    Each is taken from NumPy's own ``__reduce__``, so no private module is imported. The module
    names cover files written by NumPy 1 (``numpy.core``) and NumPy 2 (``numpy._core``).
    """
    reconstruct = np.zeros(1, np.uint8).__reduce__()[0]  # arrays, pickle protocols 0-4
    frombuffer = np.zeros(1, np.uint8).__reduce_ex__(5)[0]  # arrays, pickle protocol 5
    scalar = np.uint8(0).__reduce__()[0]  # NumPy scalars, e.g. an np.int64 in a label list
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays and plain containers, and calls nothing else.

    Unpickling calls whatever global a pickle names (``os.system``, ``builtins.eval``, ...).
    Here `find_class` hands out only NumPy's array, dtype and scalar constructors and refuses
    every other global with a `pickle.UnpicklingError` naming it, before anything runs. Use
    ``encoding="bytes"`` for the Python 2 pickles of the official datasets. (Python 3 writes
    bytes in pickle protocols 0-2 as calls of ``_codecs.encode``, so such files are refused:
    save with protocol 3 or later.)
    """

    allowed_globals = _numpy_array_globals()

    def find_class(self, module: str, name: str):
        allowed = self.allowed_globals.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR pickle only needs NumPy's array "
                f"constructors, so this file is not one and may be malicious")
        return allowed


def _unpickle_dict(raw: bytes, location: str) -> dict[str, object]:
    """Unpickle `raw` with `RestrictedUnpickler`; the result must be a dict (keys made str)."""
    try:
        value = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can fail in many ways; all mean the same
        raise DatasetError(f"{location}: cannot unpickle it ({type(error).__name__}: {error}); "
                           f"the file is truncated, corrupt or not a CIFAR pickle; extract or "
                           f"download it again") from error
    if not isinstance(value, dict):
        raise DatasetError(f"{location}: expected a pickled dict, found {_describe(value)}")
    return {_text(key): item for key, item in value.items()}


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _download(url: str, path: Path, expected_md5: str) -> None:
    """Fetch `url` to `path` via a temporary ``.part`` file beside it, checking its md5.

    Nothing is written before the server answers; `path` only appears once the whole file has
    arrived with the right md5, and the temporary file is removed whatever happens. Network and
    disk errors propagate as `OSError`, an md5 mismatch as `DatasetError`.
    """
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, part_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".",
                                                 suffix=".part")
        part = Path(part_name)
        try:
            size = int(response.headers.get("Content-Length") or 0) or None
            md5 = hashlib.md5()
            with os.fdopen(descriptor, "wb") as out, \
                    tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"downloading {path.name}") as progress:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    progress.update(len(chunk))
            if md5.hexdigest() != expected_md5:
                raise DatasetError(f"the file downloaded from {url} has md5 {md5.hexdigest()}, "
                                   f"expected {expected_md5}: the download was corrupted; "
                                   f"nothing was saved, try again")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Preprocessing and augmentation (vectorised over the batch, seeded by a Generator)
# --------------------------------------------------------------------------------------------


def normalize(images: np.ndarray, mean=CIFAR_MEAN, std=CIFAR_STD) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 ``(x / 255 - mean[c]) / std[c]`` per channel c."""
    if images.dtype != np.uint8:
        raise ValueError(f"normalize expects uint8 images (0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != len(mean) or len(std) != len(mean):
        raise ValueError(f"normalize expects images (N, C, H, W) with C = {len(mean)} channels "
                         f"(one mean and std each), got shape {images.shape}")
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = 4,
                     flip: bool = True) -> np.ndarray:
    """Random crops of the zero-padded images, each then mirrored left-right with p = 0.5.

    `images` (N, C, H, W) of any dtype; each image is padded by `padding` zeros on every side,
    an H x W window is taken at a uniformly random offset (0..2 * padding in each direction),
    and, if `flip`, reversed along W with probability 1/2. Returns a new array, same shape and
    dtype. Draws from `rng`: the N row offsets, the N column offsets, then the N flip coins.
    """
    if images.ndim != 4:
        raise ValueError(f"random_crop_flip expects images (N, C, H, W), got shape "
                         f"{images.shape}")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    count, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # windows[i, c, y, x] is the H x W crop of padded image i whose top-left corner is (y, x).
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
    top = rng.integers(0, 2 * padding + 1, size=count)
    left = rng.integers(0, 2 * padding + 1, size=count)
    crops = windows[np.arange(count), :, top, left]  # (N, C, H, W), a copy
    if flip:
        flipped = rng.random(count) < 0.5
        crops[flipped] = crops[flipped, :, :, ::-1]
    return crops


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `per_class` images of every class in `labels`, drawn without
    replacement; `ValueError` if a class has fewer images than that."""
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"class {label} has only {len(members)} images, fewer than "
                             f"per_class={per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def batches(count: int, batch_size: int, rng: np.random.Generator | None = None,
            drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays that split ``range(count)`` into batches of `batch_size`: in a random order
    drawn from `rng` (once, when called), or in order without it. The last batch is smaller
    unless `drop_last`, which leaves it out."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = np.arange(count) if rng is None else rng.permutation(count)
    stop = count - count % batch_size if drop_last else count
    return (order[start:start + batch_size] for start in range(0, stop, batch_size))
