"""Data-parallel training on Ray Train, on a real two-node Ray cluster on loopback.

``nasprune train --workers 2 --ray-address ...`` trains with one worker on the head node and one on
the worker node (each has one CPU). A test hook pauses rank 1 in the second epoch and writes its pid
(the test waits for that file); the test kills that worker with SIGKILL. Ray Train
(``FailureConfig``) restarts the worker group from the last epoch's checkpoint and the run finishes:
the checkpoint is the usual one, every epoch of it was trained by both workers on the same subnets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator
from nasprune.train import checkpoint_meta, load_checkpoint, read_train_state, resume_path
from tests.cluster import RAY_ENV, ray_cluster
from tests.train.hooks import pause_site

STEPS_PER_EPOCH = 17  # digits: 1,077 training images in batches of 64


@pytest.mark.slow
def test_two_ray_train_workers_survive_a_worker_killed_mid_training(tmp_path, monkeypatch):
    out, mark = tmp_path / "out" / "sn.pt", tmp_path / "paused.pid"
    site = pause_site(tmp_path / "site")
    # The nodes (and so the Ray Train workers) load the hook; only rank 1 pauses, once.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NASPRUNE_TEST_PAUSE_STEP", str(STEPS_PER_EPOCH + 5))
    monkeypatch.setenv("NASPRUNE_TEST_PAUSE_MARK", str(mark))
    monkeypatch.setenv("NASPRUNE_TEST_PAUSE_RANK", "1")
    with ray_cluster(worker_cpus=[1], head_cpus=1) as cluster:
        cmd = [sys.executable, "-m", "nasprune", "train", "--space", "mlp_digits", "--epochs", "3"]
        cmd += ["--warmup-epochs", "1", "--batch-size", "64", "--n-random", "1", "--workers", "2"]
        cmd += ["--ray-address", cluster.address, "--max-failures", "2", "-o", str(out)]
        cmd += ["--data-dir", str(tmp_path / "data")]
        proc = subprocess.Popen(
            cmd, env={**os.environ, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 400
        while not mark.exists():
            assert proc.poll() is None, f"training ended (rc {proc.returncode}) before the pause: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "rank 1 did not reach the pause step"
            time.sleep(0.1)
        state = read_train_state(resume_path(out))  # rank 0 saved epoch 1 before rank 1 paused in epoch 2
        assert (state["epoch"], state["world"]) == (1, 2)
        os.kill(int(mark.read_text()), signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, stdout[-4000:]
    # the restarted workers start from epoch 2: Ray's checkpoint of epoch 1, or the state file rank 0
    # wrote beside the checkpoint when Ray's controller had not registered that report yet
    assert re.search(
        r"resuming from epoch 2/3, step 0/\d+ .* \[from the (Ray Train checkpoint|state file), 2 workers\]", stdout
    ), stdout
    assert "2 Ray Train workers" in stdout

    meta = checkpoint_meta(out)
    assert meta["workers"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert all(h["workers"] == 2 and h["subnets_agree"] for h in meta["history"])
    assert meta["resumes"] == [{"epoch": 1, "step": 0, "global_step": STEPS_PER_EPOCH}]
    assert not resume_path(out).exists()
    net = load_checkpoint(out)  # the usual checkpoint format
    ev = Evaluator(net, load_dataset("digits"))
    assert ev.accuracy(net.space.largest(), "val") > 0.8  # chance is 0.1
