"""A dataset larger than the memory the process may use is added and trains: ``x.npy`` is read and
written in windows, and train batches are streamed from memory-mapped windows.

The child process caps its address space (``RLIMIT_AS``) at what it uses after its imports plus
``HEADROOM`` bytes, less than the dataset takes (glibc is told to use one malloc arena and to map large
blocks on their own: RLIMIT_AS counts the address space each extra arena reserves, not memory used);
it first proves the cap is real (loading the array
whole fails with MemoryError), then adds the dataset and trains a model on it for one epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

N, FEATURES = 36_000, 1024  # 147 MB of float32 samples
HEADROOM = 96 << 20

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from nasprune.data import load_dataset
    from nasprune.datasets import DatasetStore
    import nasprune.datasets.stream, sklearn.model_selection  # all code loaded before the cap is measured

    folder, data_dir, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # the model and one step of it exist before the cap is measured (torch reserves ~65 MB on first use)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.zeros(256, 1, 1024)).sum().backward()
    def vm():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    limit = vm() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.load(folder + "/x.npy")
        whole = "loaded"
    except MemoryError:
        whole = "MemoryError"
    info = DatasetStore.at(data_dir).add("big", folder)
    ds = load_dataset("big", data_dir=data_dir)
    seen = 0
    for x, y in ds.loader("train", batch_size=256, shuffle=True, seed=0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        seen += len(y)
    xv, yv = ds.tensors("val")
    with torch.no_grad():
        acc = float((model(xv).argmax(1) == yv).float().mean())
    print(json.dumps({"whole": whole, "streamed": type(ds).__name__, "n_bytes": info.n_bytes, "limit": limit,
                      "seen": seen, "train": info.sizes["train"], "val_acc": acc,
                      "peak_vm": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    """
)


def test_larger_than_memory_dataset_adds_and_trains(tmp_path):
    folder = tmp_path / "arrays"
    folder.mkdir()
    y = np.arange(N) % 4
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(N, 1, FEATURES))
    rng = np.random.default_rng(0)
    for s in range(0, N, 4096):
        yy = y[s : s + 4096]
        x[s : s + 4096] = rng.normal(size=(len(yy), 1, FEATURES)).astype(np.float32) + yy[:, None, None] * 0.05
    x.flush()
    del x
    np.save(folder / "y.npy", y)
    assert N * FEATURES * 4 > HEADROOM
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(tmp_path / "data"), str(HEADROOM)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "1048576",
                              "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["whole"] == "MemoryError"  # the cap is real: the array does not fit in it
    assert r["streamed"] == "StreamedDataset" and r["n_bytes"] > HEADROOM
    assert r["seen"] == r["train"]  # one full epoch
    assert r["val_acc"] > 0.5  # it learned (chance is 0.25)
