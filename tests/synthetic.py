"""Shared test material: a tiny, learnable CIFAR-10 look-alike written in the official binary
layout, a malicious pickle, and the comparison of two training runs bit for bit."""
import json
import os

import numpy as np

from minissc.checkpoint import load_checkpoint

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                    [210, 245, 60], [128, 128, 128]], dtype=np.float64)

# The columns of metrics.json that do not depend on the clock.
DETERMINISTIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                        "images", "partial")


def synthetic_images(labels, rng):
    """Each class is a colour (a palette entry) with a darker square, plus pixel noise."""
    images = np.repeat(PALETTE[labels][:, :, None, None], 32, axis=2).repeat(32, axis=3)
    images[:, :, 8:24, 8:24] *= 0.5
    images += rng.normal(0, 30, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_synthetic_cifar10(data_dir, train_per_batch=100, test_count=100, seed=0):
    """Five training batches and a test batch in cifar-10-batches-bin/; returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(data_dir, "cifar-10-batches-bin")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        count = test_count if name.startswith("test") else train_per_batch
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = synthetic_images(labels, rng).reshape(count, 3072)
        records = np.concatenate([labels[:, None].astype(np.uint8), images], axis=1)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(records.tobytes())
    with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
        f.write("\n".join(f"class{i}" for i in range(10)) + "\n")
    return data_dir


class RunsCommand:
    """Pickles to a call of os.system: whoever unpickles it with pickle.load runs `command`."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def assert_same_run(run_dir, reference_dir):
    """Two run folders hold bit-identical checkpoints and the same per-epoch numbers."""
    for name in ("checkpoint.npz", "best.npz"):
        arrays, _ = load_checkpoint(os.path.join(run_dir, name))
        expected, _ = load_checkpoint(os.path.join(reference_dir, name))
        assert arrays.keys() == expected.keys(), name
        for key in arrays:
            assert arrays[key].dtype == expected[key].dtype, (name, key)
            assert arrays[key].tobytes() == expected[key].tobytes(), (name, key)
    rows = []
    for folder in (run_dir, reference_dir):
        with open(os.path.join(folder, "metrics.json")) as f:
            rows.append([{k: row[k] for k in DETERMINISTIC_FIELDS} for row in json.load(f)])
    assert rows[0] == rows[1]
