"""``nasprune data add|list|show`` as users run them: a real subprocess, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from tests.data.helpers import blobs, image_zip


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nasprune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)  # fmt: skip


def test_add_list_show_with_sample_grid(tmp_path):
    data = str(tmp_path / "data")
    r = run("data", "add", "pets", str(image_zip(tmp_path / "pets.zip")), "--size", "16,12", "--mode", "RGB",
            "--data-dir", data)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "added dataset 'pets' (images): 24 samples of shape (3, 16, 12), 2 classes" in r.stdout
    x, y = blobs(shape=(64,), k=10, n_per_class=12)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run("data", "add", "vectors", str(tmp_path / "d.npz"), "--space", "mlp_digits", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    r = run("data", "list", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[2:]}
    assert set(lines) == {"mnist5k", "digits", "mnist1d", "fashion_mnist", "rotten_tomatoes", "pets", "vectors"}
    assert "3x16x12" in lines["pets"] and "builtin" in lines["mnist1d"]
    assert lines["mnist1d"].split()[4:] == ["10,000", "1.6MB"]  # built-ins too: samples and float32 size
    assert lines["fashion_mnist"].split()[4:] == ["70,000", "220MB"]
    assert lines["rotten_tomatoes"].split()[4:] == ["12,808", "13.1MB"]  # int64 token ids and masks
    grid = tmp_path / "grid.png"
    r = run("data", "show", "pets", "--grid", str(grid), "--data-dir", data)
    assert r.returncode == 0, r.stderr
    assert "cat" in r.stdout and "dog" in r.stdout and "normalisation (channel, on train)" in r.stdout
    assert Image.open(grid).size[0] > 8 * 16
    r = run("data", "show", "vectors", "--data-dir", data)
    assert r.returncode == 0 and "sample grid" not in r.stdout  # no grid for flat features


def test_errors_are_one_line(tmp_path):
    data = str(tmp_path / "data")
    x, y = blobs(shape=(8,))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = run("data", "add", "v", str(tmp_path / "d.npz"), "--space", "mlp_digits", "--data-dir", data)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "shape (8,) but space 'mlp_digits'" in r.stderr
    r = run("data", "add", "v", str(tmp_path / "d.npz"), "--val", "0.7", "--data-dir", data)
    assert r.returncode == 2 and "split policy: val" in r.stderr
    r = run("data", "show", "nothing", "--data-dir", data)
    assert r.returncode == 2 and "unknown dataset 'nothing'" in r.stderr
    assert not list((tmp_path / "data" / "datasets").glob("*.json"))


def test_the_listed_sizes_of_the_built_ins_are_theirs():
    from nasprune.data import BUILTIN_AVAILABLE, DATASETS, load_dataset
    from nasprune.datasets.record import BUILTINS
    from nasprune.errors import DatasetError

    assert set(BUILTINS) == set(DATASETS)
    for name, n in ((name, b.samples) for name, b in BUILTINS.items()):
        if name in BUILTIN_AVAILABLE:
            try:
                BUILTIN_AVAILABLE[name]()
            except DatasetError:
                continue  # tests/data/test_fashion_mnist.py fails for this, saying how to install it
        sizes = load_dataset(name).info.sizes
        assert sizes["train"] + sizes["val"] + sizes["test"] == n, name
