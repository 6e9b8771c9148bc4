"""Tests of minissc.data on tiny fake CIFAR datasets built in tmp_path (no network, no real
data)."""
import io
import pickle
import struct
import tarfile
import urllib.error

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissc import data
from minissc.data import DatasetError, DatasetNotFoundError, load_cifar
from strategies import seeds
from synthetic import RunsCommand

DATASETS = ("cifar10", "cifar100")
LAYOUTS = ("python", "binary", "python archive", "binary archive")


# --------------------------------------------------------------------------------------------
# Tiny fake datasets in every layout
# --------------------------------------------------------------------------------------------


def fake_dataset(dataset, seed=0, per_file=3):
    """Random flat pixels (N, 3072), labels and coarse labels for each file of `dataset`'s python
    version (the binary files have the same names plus ".bin"), and class names."""
    spec = data.DATASETS[dataset]
    python = spec.versions[0]
    rng = np.random.default_rng(seed)
    files = {name: dict(pixels=rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                        labels=rng.integers(0, spec.num_classes, per_file),
                        coarse=rng.integers(0, 20, per_file))
             for name in python.train_files + python.test_files}
    classes = [f"class_{label}" for label in range(spec.num_classes)]
    return files, classes


def python_batch(dataset, batch):
    """The pickled dict of one python-version batch, keys as bytes like the official files."""
    content = {b"batch_label": b"fake batch", b"data": batch["pixels"],
               b"filenames": [f"image_{i}.png".encode() for i in range(len(batch["pixels"]))]}
    if dataset == "cifar10":
        content[b"labels"] = batch["labels"].tolist()
    else:
        content[b"fine_labels"] = batch["labels"].tolist()
        content[b"coarse_labels"] = batch["coarse"].tolist()
    return content


def write_folder(root, dataset, fake, kind, names=True):
    """Write the extracted `kind` ("python" or "binary") version of a fake dataset under root."""
    files, classes = fake
    python, binary = data.DATASETS[dataset].versions
    version = python if kind == "python" else binary
    folder = root / version.folder
    folder.mkdir(parents=True)
    for name, batch in files.items():
        if kind == "python":
            (folder / name).write_bytes(pickle.dumps(python_batch(dataset, batch), protocol=4))
        else:
            label_bytes = [batch["labels"][:, None]]
            if dataset == "cifar100":
                label_bytes.insert(0, batch["coarse"][:, None])
            records = np.concatenate(label_bytes + [batch["pixels"]], axis=1).astype(np.uint8)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
    if names and kind == "python":
        key = b"label_names" if dataset == "cifar10" else b"fine_label_names"
        meta = {key: [name.encode() for name in classes]}
        (folder / version.names_file).write_bytes(pickle.dumps(meta, protocol=4))
    elif names:
        (folder / version.names_file).write_text("\n".join(classes) + "\n")
    return folder


def write_archive(root, dataset, fake, kind):
    """Write the official-style .tar.gz of the `kind` version under root; return its path."""
    staging = root.parent / f"{root.name}-staging-{kind}"
    folder = write_folder(staging, dataset, fake, kind)
    version = data.DATASETS[dataset].versions[0 if kind == "python" else 1]
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / version.archive, "w:gz") as tar:
        tar.add(folder, arcname=version.folder)
    return root / version.archive


def write_layout(root, dataset, fake, layout):
    """Write a fake dataset in one of LAYOUTS under root; return the folder or archive path."""
    kind, _, archive = layout.partition(" ")
    if archive:
        return write_archive(root, dataset, fake, kind)
    return write_folder(root, dataset, fake, kind)


def accept_md5_of(monkeypatch, archive):
    """Make `archive`'s md5 the official one for its file name."""
    monkeypatch.setitem(data.ARCHIVE_MD5, archive.name, data.file_md5(archive))


def expected_arrays(fake, version):
    """(train images, train labels, test images, test labels) of a fake dataset."""
    files, _ = fake
    def stack(names, key):
        return np.concatenate([files[name][key] for name in names])
    return (stack(version.train_files, "pixels").reshape(-1, 3, 32, 32),
            stack(version.train_files, "labels"),
            stack(version.test_files, "pixels").reshape(-1, 3, 32, 32),
            stack(version.test_files, "labels"))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_layout_loads_the_same_arrays(tmp_path, monkeypatch, dataset, layout):
    fake = fake_dataset(dataset)
    written = write_layout(tmp_path / "data", dataset, fake, layout)
    if layout.endswith("archive"):
        accept_md5_of(monkeypatch, written)
    loaded = load_cifar(dataset, tmp_path / "data", download=False)
    train_images, train_labels, test_images, test_labels = expected_arrays(
        fake, data.DATASETS[dataset].versions[0])
    np.testing.assert_array_equal(loaded.train_images, train_images)
    np.testing.assert_array_equal(loaded.train_labels, train_labels)
    np.testing.assert_array_equal(loaded.test_images, test_images)
    np.testing.assert_array_equal(loaded.test_labels, test_labels)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.int64
    assert loaded.classes == fake[1] and loaded.num_classes == data.DATASETS[dataset].num_classes
    assert str(written) in loaded.source and layout.split()[0] in loaded.source


def test_pixels_are_rgb_planes_of_row_major_rows(tmp_path):
    files, classes = fake_dataset("cifar10")
    flat = files["data_batch_1"]["pixels"]
    write_folder(tmp_path, "cifar10", (files, classes), "binary")
    image = load_cifar("cifar10", tmp_path, download=False).train_images[0]
    channel, row, column = np.indices((3, 32, 32))
    np.testing.assert_array_equal(image, flat[0][channel * 1024 + row * 32 + column])


def python2_pickle(pixels, labels):
    """A batch pickled as the official files were (Python 2 cPickle, protocol 2): Python 2 str
    (BINSTRING) for keys and array bytes, and NumPy 1's module name numpy.core.multiarray."""
    def string(value):
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<I", len(value)) + value

    def integer(value):
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    rows, columns = pixels.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"   # _reconstruct(
             + b"K\x00\x85" + string(b"b") + b"\x87R"                    #   ndarray, (0,), 'b')
             + b"(K\x01" + integer(rows) + integer(columns) + b"\x86"    # state: 1, shape,
             + b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R"  #   dtype('u1', 0, 1)
             + b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             + b"\x89" + string(pixels.tobytes()) + b"tb")              #   C order, bytes
    label_list = b"](" + b"".join(integer(int(label)) for label in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_loads_python2_pickles_like_the_official_ones(tmp_path):
    files, classes = fake_dataset("cifar10")
    folder = write_folder(tmp_path, "cifar10", (files, classes), "python")
    for name, batch in files.items():
        (folder / name).write_bytes(python2_pickle(batch["pixels"], batch["labels"]))
    loaded = load_cifar("cifar10", tmp_path, download=False)
    train_images, train_labels, _, _ = expected_arrays((files, classes),
                                                       data.DATASETS["cifar10"].versions[0])
    np.testing.assert_array_equal(loaded.train_images, train_images)
    np.testing.assert_array_equal(loaded.train_labels, train_labels)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_restricted_unpickler_rebuilds_arrays_and_numpy_scalars(protocol):
    value = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "count": np.int64(7),
             "labels": [1, 2], "name": b"batch"}
    raw = pickle.dumps(value, protocol=protocol)
    loaded = data.RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    np.testing.assert_array_equal(loaded["data"], value["data"])
    assert loaded["count"] == 7 and loaded["labels"] == [1, 2] and loaded["name"] == b"batch"


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_missing_names_file_gives_label_indices_as_names(tmp_path, kind):
    write_folder(tmp_path, "cifar100", fake_dataset("cifar100"), kind, names=False)
    assert load_cifar("cifar100", tmp_path, download=False).classes == [str(i) for i in range(100)]


def test_unknown_dataset_name_is_refused():
    with pytest.raises(ValueError, match="'cifar1000'.*cifar10, cifar100"):
        load_cifar("cifar1000", ".", download=False)


# --------------------------------------------------------------------------------------------
# Broken files: each gives a DatasetError naming the file
# --------------------------------------------------------------------------------------------


def test_archive_with_wrong_md5_is_refused_unless_not_verified(tmp_path):
    archive = write_archive(tmp_path / "data", "cifar10", fake_dataset("cifar10"), "python")
    with pytest.raises(DatasetError) as error:
        load_cifar("cifar10", tmp_path / "data", download=False)
    message = str(error.value)
    assert str(archive) in message and data.file_md5(archive) in message
    assert data.ARCHIVE_MD5["cifar-10-python.tar.gz"] in message and "verify_md5=False" in message
    loaded = load_cifar("cifar10", tmp_path / "data", download=False, verify_md5=False)
    assert len(loaded.train_images) == 15 and "md5 not checked" in loaded.source


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_truncated_archive_is_a_dataset_error(tmp_path, kind):
    archive = write_archive(tmp_path / "data", "cifar100", fake_dataset("cifar100"), kind)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt") as error:
        load_cifar("cifar100", tmp_path / "data", download=False, verify_md5=False)
    assert str(archive) in str(error.value)


def test_archive_that_is_not_gzip_is_a_dataset_error(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz is not a readable .tar.gz"):
        load_cifar("cifar10", tmp_path, download=False, verify_md5=False)


@pytest.mark.parametrize("dataset", DATASETS)
def test_truncated_binary_file_is_a_dataset_error(tmp_path, dataset):
    folder = write_folder(tmp_path, dataset, fake_dataset(dataset), "binary")
    truncated = folder / data.DATASETS[dataset].versions[1].test_files[0]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="not a whole number of") as error:
        load_cifar(dataset, tmp_path, download=False)
    assert str(truncated) in str(error.value)


def test_binary_label_out_of_range_is_a_dataset_error(tmp_path):
    folder = write_folder(tmp_path, "cifar10", fake_dataset("cifar10"), "binary")
    records = bytearray((folder / "test_batch.bin").read_bytes())
    records[0] = 10
    (folder / "test_batch.bin").write_bytes(bytes(records))
    with pytest.raises(DatasetError, match=r"test_batch.bin: labels must lie in 0..9"):
        load_cifar("cifar10", tmp_path, download=False)


@pytest.mark.parametrize("change, message", [
    (lambda batch: batch.pop(b"data"), "has no key 'data'"),
    (lambda batch: batch.pop(b"labels"), "has no key 'labels'"),
    (lambda batch: batch.update({b"data": batch[b"data"][:, :3000]}), r"shape \(N, 3072\)"),
    (lambda batch: batch.update({b"data": batch[b"data"].astype(np.int16)}), "uint8"),
    (lambda batch: batch.update({b"labels": batch[b"labels"][:-1]}), "expected 3 integer labels"),
    (lambda batch: batch.update({b"labels": [0, 1, -1]}), "labels must lie in 0..9"),
])
def test_malformed_python_batch_is_a_dataset_error(tmp_path, change, message):
    files, classes = fake_dataset("cifar10")
    folder = write_folder(tmp_path, "cifar10", (files, classes), "python")
    batch = python_batch("cifar10", files["data_batch_3"])
    change(batch)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DatasetError, match=message) as error:
        load_cifar("cifar10", tmp_path, download=False)
    assert str(folder / "data_batch_3") in str(error.value)


def test_truncated_pickle_is_a_dataset_error(tmp_path):
    folder = write_folder(tmp_path, "cifar100", fake_dataset("cifar100"), "python")
    (folder / "train").write_bytes((folder / "train").read_bytes()[:5000])
    with pytest.raises(DatasetError, match="cannot unpickle") as error:
        load_cifar("cifar100", tmp_path, download=False)
    assert str(folder / "train") in str(error.value)


def test_incomplete_folder_is_a_dataset_error(tmp_path):
    folder = write_folder(tmp_path, "cifar10", fake_dataset("cifar10"), "python")
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_4"):
        load_cifar("cifar10", tmp_path, download=False)


# --------------------------------------------------------------------------------------------
# Trust: malicious pickles and archive members
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("target", ["data_batch_1", "test_batch", "batches.meta"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol, target):
    folder = write_folder(tmp_path, "cifar10", fake_dataset("cifar10"), "python")
    marker = tmp_path / "payload-ran"
    payload = {"data": RunsCommand(f"touch {marker}"), "labels": [0], "label_names": ["x"]}
    (folder / target).write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DatasetError, match=r"refused global (posix|nt)\.system") as error:
        load_cifar("cifar10", tmp_path, download=False)
    assert str(folder / target) in str(error.value)
    assert not marker.exists()


def test_restricted_unpickler_raises_unpickling_error_naming_the_global():
    raw = pickle.dumps(RunsCommand("true"))
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt)\.system"):
        data.RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()


def add_member(tar, name, content=b"", link_to=None):
    info = tarfile.TarInfo(name)
    if link_to is None:
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    else:
        info.type, info.linkname = tarfile.SYMTYPE, link_to
        tar.addfile(info)


def all_files(root):
    return sorted(path for path in root.rglob("*"))


def test_archive_members_outside_the_folder_and_links_are_ignored(tmp_path):
    archive = write_archive(tmp_path / "data", "cifar10", fake_dataset("cifar10"), "python")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data-staging-python" / "cifar-10-batches-py",
                arcname="cifar-10-batches-py")
        add_member(tar, "../evil", b"escaped")
        add_member(tar, "/tmp/evil-absolute", b"escaped")
        add_member(tar, "cifar-10-batches-py/link", link_to="../../evil-link")
    before = all_files(tmp_path)
    loaded = load_cifar("cifar10", tmp_path / "data", download=False, verify_md5=False)
    assert len(loaded.train_images) == 15
    assert all_files(tmp_path) == before
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_archive_whose_batch_is_a_symlink_is_a_dataset_error(tmp_path):
    folder = write_folder(tmp_path / "staging", "cifar10", fake_dataset("cifar10"), "python")
    (folder / "data_batch_2").unlink()
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        add_member(tar, "cifar-10-batches-py/data_batch_2", link_to="/etc/passwd")
    with pytest.raises(DatasetError, match="data_batch_2 is not a regular file"):
        load_cifar("cifar10", tmp_path / "data", download=False, verify_md5=False)


# --------------------------------------------------------------------------------------------
# Download (urlopen is replaced: no network)
# --------------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers; optionally the connection drops."""

    def __init__(self, body, drop_after_first_read=False):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}
        self.drop_after_first_read = drop_after_first_read
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.drop_after_first_read and self.reads > 1:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def serve(monkeypatch, body=None, error=None, drop_after_first_read=False):
    """Replace urlopen by a fake serving `body` (or raising `error`); return the requests made."""
    requests = []

    def urlopen(url, timeout):
        requests.append((url, timeout))
        if error is not None:
            raise error
        return FakeResponse(body, drop_after_first_read)

    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    return requests


def python_archive_bytes(tmp_path, dataset):
    return write_archive(tmp_path / "server", dataset, fake_dataset(dataset), "python").read_bytes()


@pytest.mark.parametrize("dataset", DATASETS)
def test_download_puts_the_archive_in_place_and_loads_it(tmp_path, monkeypatch, dataset):
    body = python_archive_bytes(tmp_path, dataset)
    name = data.DATASETS[dataset].versions[0].archive
    monkeypatch.setitem(data.ARCHIVE_MD5, name, data.file_md5(tmp_path / "server" / name))
    requests = serve(monkeypatch, body)
    data_dir = tmp_path / "new" / "data"
    loaded = load_cifar(dataset, data_dir)
    assert requests == [(data.DOWNLOAD_URL + name, data.DOWNLOAD_TIMEOUT)]
    assert (data_dir / name).read_bytes() == body
    assert all_files(data_dir) == [data_dir / name]
    train_images = expected_arrays(fake_dataset(dataset), data.DATASETS[dataset].versions[0])[0]
    np.testing.assert_array_equal(loaded.train_images, train_images)
    assert "downloaded" in loaded.source


def test_download_with_wrong_md5_leaves_nothing_behind(tmp_path, monkeypatch):
    serve(monkeypatch, python_archive_bytes(tmp_path, "cifar10"))
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError, match="has md5 .*, expected c58f30108f718f92721af3b95e74349a"):
        load_cifar("cifar10", data_dir)
    assert all_files(data_dir) == []


def test_download_that_breaks_off_leaves_nothing_behind(tmp_path, monkeypatch):
    serve(monkeypatch, python_archive_bytes(tmp_path, "cifar10"), drop_after_first_read=True)
    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        load_cifar("cifar10", tmp_path / "data")
    assert all_files(tmp_path / "data") == []


def test_offline_gives_a_not_found_error_saying_what_to_put_where(tmp_path, monkeypatch):
    serve(monkeypatch, error=urllib.error.URLError("no network"))
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as error:
        load_cifar("cifar100", data_dir)
    message = str(error.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(data_dir / "cifar-100-python.tar.gz") in message
    assert f"{data_dir / 'cifar-100-python'}/" in message and "no network" in message
    assert not data_dir.exists()


def test_download_false_with_nothing_there_is_a_not_found_error(tmp_path, monkeypatch):
    requests = serve(monkeypatch, error=AssertionError("must not download"))
    with pytest.raises(DatasetNotFoundError, match="download=False") as error:
        load_cifar("cifar10", tmp_path, download=False)
    assert str(tmp_path / "cifar-10-python.tar.gz") in str(error.value) and requests == []


# --------------------------------------------------------------------------------------------
# Augmentation and batching
# --------------------------------------------------------------------------------------------


def crops_of(image, padding):
    """Slow twin of random_crop_flip: every (top, left, flipped) choice and the image it gives."""
    channels, height, width = image.shape
    padded = np.zeros((channels, height + 2 * padding, width + 2 * padding), image.dtype)
    padded[:, padding:padding + height, padding:padding + width] = image
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + height, left:left + width]
            yield (top, left, False), crop
            yield (top, left, True), crop[:, :, ::-1]


def random_images(rng, shape, dtype=np.uint8):
    return rng.integers(1, 256, shape).astype(dtype)


@given(count=st.integers(1, 5), channels=st.integers(1, 3), height=st.integers(1, 6),
       width=st.integers(1, 6), padding=st.integers(0, 3),
       dtype=st.sampled_from([np.uint8, np.float32]), seed=seeds)
def test_each_output_is_a_crop_of_the_padded_image_maybe_flipped(count, channels, height, width,
                                                                padding, dtype, seed):
    images = random_images(np.random.default_rng(seed), (count, channels, height, width), dtype)
    original = images.copy()
    out = data.random_crop_flip(images, np.random.default_rng(seed), padding)
    assert out.shape == images.shape and out.dtype == images.dtype
    for image, crop in zip(images, out):
        assert any(np.array_equal(crop, candidate) for _, candidate in crops_of(image, padding))
    np.testing.assert_array_equal(images, original)


def test_every_offset_and_flip_occurs():
    images = random_images(np.random.default_rng(0), (1000, 3, 6, 6))
    out = data.random_crop_flip(images, np.random.default_rng(1), padding=1)
    seen = {next(choice for choice, candidate in crops_of(image, 1)
                 if np.array_equal(crop, candidate))
            for image, crop in zip(images, out)}
    assert seen == {(top, left, flipped) for top in range(3) for left in range(3)
                    for flipped in (False, True)}


def test_no_padding_and_no_flip_is_the_identity():
    images = random_images(np.random.default_rng(0), (10, 3, 8, 8))
    out = data.random_crop_flip(images, np.random.default_rng(0), padding=0, flip=False)
    np.testing.assert_array_equal(out, images)


def test_flips_mirror_left_right_about_half_the_images():
    images = random_images(np.random.default_rng(0), (2000, 3, 4, 4))
    out = data.random_crop_flip(images, np.random.default_rng(1), padding=0)
    flipped = np.array([np.array_equal(o, image[..., ::-1]) for o, image in zip(out, images)])
    kept = np.array([np.array_equal(o, image) for o, image in zip(out, images)])
    assert np.all(flipped != kept)
    assert 0.45 < flipped.mean() < 0.55


def test_same_seed_same_augmentation():
    images = random_images(np.random.default_rng(0), (50, 3, 32, 32))
    first = data.random_crop_flip(images, np.random.default_rng(7))
    np.testing.assert_array_equal(first, data.random_crop_flip(images, np.random.default_rng(7)))
    assert not np.array_equal(first, data.random_crop_flip(images, np.random.default_rng(8)))


def test_normalize_a_known_pixel():
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[1, 0, 3, 4], images[1, 2, 5, 6] = 255, 128
    out = data.normalize(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert out[1, 0, 3, 4] == pytest.approx((1 - 0.4914) / 0.2023, rel=1e-6)
    assert out[1, 2, 5, 6] == pytest.approx((128 / 255 - 0.4465) / 0.2010, rel=1e-6)
    assert out[0, 1, 0, 0] == pytest.approx(-0.4822 / 0.1994, rel=1e-6)
    mean, std = data.NORMALIZATION["cifar100"]
    out = data.normalize(images, mean, std)
    assert out[0, 1, 0, 0] == pytest.approx(-mean[1] / std[1], rel=1e-6)


def test_normalize_refuses_non_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        data.normalize(np.zeros((1, 3, 2, 2), np.float32))


def test_balanced_subset_takes_exactly_per_class_of_each_class():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    indices = data.balanced_subset(labels, 20, np.random.default_rng(1))
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(np.bincount(labels[indices], minlength=10), np.full(10, 20))
    again = data.balanced_subset(labels, 20, np.random.default_rng(1))
    np.testing.assert_array_equal(indices, again)


def test_balanced_subset_refuses_a_class_that_is_too_small():
    with pytest.raises(ValueError, match="class 2 has only 1 images"):
        data.balanced_subset(np.array([0, 0, 1, 1, 2]), 2, np.random.default_rng(0))


@pytest.mark.parametrize("count, batch_size", [(100, 32), (96, 32), (5, 10)])
def test_batches_cover_every_index_once(count, batch_size):
    ordered = list(data.batches(count, batch_size))
    np.testing.assert_array_equal(np.concatenate(ordered), np.arange(count))
    assert [len(b) for b in ordered[:-1]] == [batch_size] * (len(ordered) - 1)
    shuffled = np.concatenate(list(data.batches(count, batch_size, np.random.default_rng(0))))
    np.testing.assert_array_equal(np.sort(shuffled), np.arange(count))
    assert not np.array_equal(shuffled, np.arange(count))


def test_batches_drop_last_leaves_out_the_short_batch():
    sizes = [len(b) for b in data.batches(100, 32, np.random.default_rng(0), drop_last=True)]
    assert sizes == [32, 32, 32]
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(10, 0)
