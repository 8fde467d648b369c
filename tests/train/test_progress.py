"""What a job shows while its supernet trains: epoch records as job progress and MLflow step metrics,
including where an interrupted training resumed."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from nasprune.search.job import Progress, TrainingProgress
from nasprune.tracking import MlflowTracker
from nasprune.train import TrainConfig, resume_path, train_supernet

RECIPE = TrainConfig(epochs=3, warmup_epochs=1, batch_size=64, max_shift=0, n_random=1)


class Crash(Exception):
    pass


def _crash_after_first_epoch(rec: dict) -> None:
    if rec["epoch"] == 1:
        raise Crash  # the process dies after the first epoch's state was saved


def test_a_resumed_training_reports_its_epochs_to_the_job_and_to_mlflow(tmp_path):
    ckpt = tmp_path / "sn.pt"
    with pytest.raises(Crash):
        train_supernet("mlp_digits", RECIPE, progress=False, checkpoint=ckpt, on_epoch=_crash_after_first_epoch)
    assert resume_path(ckpt).is_file() and not ckpt.exists()

    shown: list[Progress] = []
    notes: list[str] = []

    def on_epoch(rec: dict) -> None:
        t = TrainingProgress.of(rec)
        shown.append(Progress(stage="training supernet", message=t.describe(), training=t))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    res = train_supernet(
        "mlp_digits", RECIPE, progress=False, checkpoint=ckpt, tracker=tracker, on_epoch=on_epoch, notify=notes.append
    )
    assert tracker.error is None
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nasprune/mlp_digits/train").experiment_id])
    steps = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in
             ("train_loss", "val_acc_largest", "val_acc_smallest", "resumed_from_epoch")}  # fmt: skip

    assert notes == [notes[0]] and notes[0].startswith("resuming from epoch 2/3, step 0/17")
    assert [p.training.epoch for p in shown] == [2, 3]
    assert all(p.training.resumed_from_epoch == 2 and p.training.n_epochs == 3 for p in shown)
    last = shown[-1]
    assert Progress.model_validate_json(last.model_dump_json()) == last  # as the job store keeps it
    assert "epoch 3/3" in last.message and "resumed at epoch 2" in last.message and "smallest" in last.message
    assert last.training.val_acc_largest == res.history[-1]["val_acc_largest"]
    # the resumed run logs the epochs it trained, at their epoch numbers
    assert [s for s, _ in sorted(steps["train_loss"])] == [2, 3]
    assert [v for _, v in sorted(steps["val_acc_smallest"])] == [h["val_acc_smallest"] for h in res.history[1:]]
    assert [v for _, v in steps["resumed_from_epoch"]] == [2, 2]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]  # the checkpoint keeps the whole history


@pytest.mark.slow
def test_a_search_job_that_trains_its_supernet_shows_the_epochs(prepared, tmp_path, monkeypatch):
    """``run_job`` on a data dir without a trained supernet: the job's progress has a 'training
    supernet' stage per epoch (a 2-epoch recipe stands in for the 40-epoch default). The data dir holds
    only the session's latency table (``prepared``'s), not its supernet."""
    import nasprune.train
    from nasprune.latency import table_path
    from nasprune.search.job import JobContext, SearchJob
    from nasprune.search.runner import run_job

    table = prepared[1]
    table.save(table_path("mlp_digits", "local-cpu", tmp_path))
    monkeypatch.setattr(nasprune.train, "default_recipe", lambda _space: RECIPE.model_copy(update={"epochs": 2}))
    seen: list[Progress] = []
    ctx = JobContext(
        job_id="trains", storage_url=f"sqlite:///{tmp_path / 'trials.db'}", output_dir=tmp_path / "out",
        data_dir=tmp_path, on_progress=seen.append,
    )  # fmt: skip
    job = SearchJob(space="mlp_digits", latency_budget_ms=table.min_latency() * 3, n_trials=3, verify_top_k=1,
                    finetune_epochs=0)  # fmt: skip
    run_job(job, ctx)
    training = [p for p in seen if p.stage == "training supernet"]
    assert [p.training.epoch for p in training] == [1, 2]
    assert all(p.training.n_epochs == 2 and p.training.val_acc_smallest is not None for p in training)
    stages = [p.stage for p in seen]
    # the table (and the budget check) come first: nothing is trained for a budget no subnet can meet
    assert stages.index("building latency table") < stages.index("preparing supernet")
    assert stages.index("training supernet") > stages.index("preparing supernet")
