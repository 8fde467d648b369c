"""A training killed with SIGKILL resumes from its last epoch and ends with the same weights.

Three real ``nasprune train`` processes on the same recipe: one is stopped at a known step of its
second epoch (a test hook pauses it there and writes its pid: the test waits for that file, not for
a time) and killed with SIGKILL; it is run again and resumes; a third runs uninterrupted. The
resumed run's checkpoint equals the uninterrupted one's bitwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasprune.errors import CheckpointError
from nasprune.registry import load_space
from nasprune.train import (
    TrainConfig,
    checkpoint_meta,
    load_checkpoint,
    read_train_state,
    resume_path,
    step_subnets,
    train_supernet,
)
from nasprune.train_loop import check_state
from tests.train.hooks import pause_site

SPACE = "mlp_digits"
ARGS = ["--epochs", "3", "--warmup-epochs", "1", "--batch-size", "64", "--n-random", "1", "--seed", "5"]
STEPS_PER_EPOCH = 17  # digits: 1,077 training images in batches of 64


def _train_cmd(out: Path, data_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nasprune",
        "train",
        "--space",
        SPACE,
        *ARGS,
        "-o",
        str(out),
        "--data-dir",
        str(data_dir),
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the training ended (rc {proc.returncode}) before pausing: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no pause mark {path} after {timeout_s} s")
        time.sleep(0.05)


def test_kill_9_then_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    data_dir = tmp_path / "data"
    killed_out, ref_out = tmp_path / "killed" / "sn.pt", tmp_path / "ref" / "sn.pt"
    mark = tmp_path / "paused.pid"
    pause_at = STEPS_PER_EPOCH + 7  # in the second epoch, after the first epoch's state was saved
    site = pause_site(tmp_path / "site")
    env = _env(
        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        NASPRUNE_TEST_PAUSE_STEP=str(pause_at),
        NASPRUNE_TEST_PAUSE_MARK=str(mark),
    )
    proc = subprocess.Popen(
        _train_cmd(killed_out, data_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for(mark, proc)
    assert int(mark.read_text()) == proc.pid
    state = read_train_state(resume_path(killed_out))
    assert (state["epoch"], state["step"]) == (1, 0) and len(state["history"]) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not killed_out.exists()

    resumed = subprocess.run(_train_cmd(killed_out, data_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from epoch 2/3, step 0/{STEPS_PER_EPOCH}" in resumed.stdout
    assert not resume_path(killed_out).exists()  # the state goes once the checkpoint is written

    ref = subprocess.run(_train_cmd(ref_out, data_dir), env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "resuming" not in ref.stdout

    a, b = load_checkpoint(killed_out).state_dict(), load_checkpoint(ref_out).state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ
    meta_a, meta_b = checkpoint_meta(killed_out), checkpoint_meta(ref_out)
    assert meta_a["resumes"] == [{"epoch": 1, "step": 0, "global_step": STEPS_PER_EPOCH}] and meta_b["resumes"] == []
    assert [h["train_loss"] for h in meta_a["history"]] == [h["train_loss"] for h in meta_b["history"]]


def test_a_state_of_another_recipe_or_space_is_refused(tmp_path):
    space = load_space(SPACE)
    cfg = TrainConfig(epochs=3, warmup_epochs=1, batch_size=64, n_random=1, max_shift=0)
    state = {"version": 1, "space": SPACE, "space_digest": space.digest(), "recipe": cfg.model_dump()}
    check_state(state, space, cfg, "s")
    with pytest.raises(CheckpointError, match=r"another recipe \(epochs: 3 then, 4 now\).*--restart"):
        check_state(state, space, cfg.model_copy(update={"epochs": 4}), "s")
    with pytest.raises(CheckpointError, match="belongs to space 'mlp_digits'.*not 'resnet_mnist'"):
        check_state(state, load_space("resnet_mnist"), cfg, "s")
    (tmp_path / "x.resume").write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="damaged.*delete it"):
        read_train_state(tmp_path / "x.resume")


def test_the_subnets_of_a_step_depend_on_seed_and_step_only():
    space = load_space("resnet_mnist")
    cfg = TrainConfig(n_random=3, seed=1)
    first = [s.key() for s in step_subnets(space, cfg, 41)]
    assert first == [s.key() for s in step_subnets(space, cfg, 41)]  # any worker, any process, after a resume
    assert first != [s.key() for s in step_subnets(space, cfg, 42)]
    assert first != [s.key() for s in step_subnets(space, cfg.model_copy(update={"seed": 2}), 41)]


def test_restart_ignores_a_saved_state(tmp_path):
    ckpt = tmp_path / "sn.pt"
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=64, n_random=1, max_shift=0)

    def stop_after_first(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(SPACE, cfg, progress=False, checkpoint=ckpt, on_epoch=stop_after_first)
    assert read_train_state(resume_path(ckpt))["epoch"] == 1
    notes: list[str] = []
    res = train_supernet(SPACE, cfg, progress=False, checkpoint=ckpt, resume=False, notify=notes.append)
    assert notes == [] and res.resumed == [] and [h["epoch"] for h in res.history] == [1, 2]
    assert checkpoint_meta(ckpt)["resumes"] == [] and not resume_path(ckpt).exists()
