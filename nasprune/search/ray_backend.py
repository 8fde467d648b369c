"""Ray Tune backend: trials run as Ray tasks (locally or across a cluster), suggested by OptunaSearch
over the same durable study as the Optuna backend.

Workers never read paths from the driver's disk: the supernet weights, the latency table and the
dataset's scoring splits (calibration and val, with its record) go through Ray's object store
(``tune.with_parameters``), so trials can land on any node and no node rebuilds a dataset by name.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nasprune.data import dataset_from_payload, scoring_payload
from nasprune.evaluate import Evaluator
from nasprune.latency.table import LatencyTable
from nasprune.ray_cluster import connect, disconnect
from nasprune.registry import create_supernet
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.objective import Objective
from nasprune.search.study import TrialRecord, make_sampler, make_storage, n_complete, open_study, quiet_optuna
from nasprune.space import parse_space

_WORKER_CACHE: dict[str, Objective] = {}


def _worker_objective(payload: dict) -> Objective:
    """Rebuild the objective once per worker process (actors are reused across trials)."""
    key = payload["cache_key"]
    if key not in _WORKER_CACHE:
        import io

        import torch

        torch.set_num_threads(1)
        space = parse_space(payload["space"])
        net = create_supernet(space)
        net.load_state_dict(torch.load(io.BytesIO(payload["weights"]), weights_only=True))
        table = LatencyTable.model_validate_json(payload["table"])
        job = SearchJob.model_validate(payload["job"])
        ev = Evaluator(net.eval(), dataset_from_payload(payload["data"]), payload["checkpoint_id"])
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = Objective(net, ev, table, job)
    return _WORKER_CACHE[key]


def _trainable(config: dict, payload: dict) -> dict:
    objective = _worker_objective(payload)
    params = {k: v for k, v in config.items() if k.startswith(("depth.", "width."))}
    t0 = time.perf_counter()
    cfg = objective.config_of(params)
    accuracy = objective.evaluator.accuracy(cfg, "val")
    import ray

    return {
        "accuracy": accuracy,
        "latency_ms": objective.table.predict(cfg),  # Tune checks every metric is reported
        "optuna_number": config["optuna_number"],
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),  # tells apart nodes that share an IP
        "eval_s": time.perf_counter() - t0,
    }


def _not_restorable():
    raise RuntimeError("a nasprune job resumes from its Optuna study, not from Ray Tune's experiment state")


def _payload(objective: Objective, job: SearchJob, checkpoint_id: str) -> dict:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(objective.supernet.state_dict(), buf)
    return {
        "cache_key": f"{checkpoint_id}:{objective.table.digest()}:{job.model_dump_json()}",
        "space": objective.space.model_dump(mode="json"),
        "weights": buf.getvalue(),
        "table": objective.table.model_dump_json(),
        "job": job.model_dump(mode="json"),
        "checkpoint_id": checkpoint_id,
        "data": scoring_payload(objective.evaluator.dataset),  # the splits trials score on, not a name
    }


def _no_file_loggers() -> list:
    """Stand-ins for the CSV, JSON and TensorBoard loggers Tune adds to a run that has none of its own.

    Those write result.json/progress.csv per trial, which nothing here reads (trials are read from
    the Optuna storage). Passing no-op instances turns them off for this run only, where the
    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` variable would turn them off for the whole process.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    def skip(self, *args, **kwargs) -> None:
        return None

    hooks = ("log_trial_start", "log_trial_restore", "log_trial_save", "log_trial_result", "log_trial_end")
    return [
        type(f"_No{base.__name__}", (base,), {"__init__": skip, **dict.fromkeys(hooks, skip)})()
        for base in (CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback)
    ]


_QUIET = threading.local()


class _NoMetricsFilesFilter(logging.Filter):
    """Drops Tune's "Failed to fetch metrics" warning in threads inside :func:`_no_metrics_files_warning`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_QUIET, "active", False) and record.getMessage().startswith("Failed to fetch metrics"))


_ANALYSIS_FILTER = _NoMetricsFilesFilter()


@contextlib.contextmanager
def _no_metrics_files_warning():
    """Without the file loggers, the ResultGrid that ``fit()`` builds would warn once per trial that
    it found no metrics files. Only this thread's warnings are dropped (a thread-local flag and one
    filter, added once), where changing the logger's level would silence every thread's and race
    with other jobs restoring it."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_ANALYSIS_FILTER)  # idempotent
    _QUIET.active = True
    try:
        yield
    finally:
        _QUIET.active = False


@quiet_optuna()
def run(
    objective: Objective,
    job: SearchJob,
    ctx: JobContext,
    on_trial: Callable[[TrialRecord], None],
    checkpoint_id: str = "",
) -> dict:
    """Run the remaining trials with Ray Tune.

    Returns ``{'nodes': {ip: n_trials}, 'node_ids': {ray_node_id: n_trials}}`` for reporting; each
    trial also keeps the id of the Ray node it ran on as the user attribute ``ray_node_id``.
    """
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    connect(ray, ctx.ray_address)
    try:
        study = open_study(job, ctx.job_id, ctx.storage_url)  # fails trials left running, seeds once
        remaining = job.n_trials - n_complete(study)
        if not study.user_attrs.get("seeded"):
            for cfg in objective.seeds():
                study.enqueue_trial(objective.params_of(cfg), skip_if_exists=True)
            study.set_user_attr("seeded", True)
        if remaining <= 0:
            return {"nodes": {}, "node_ids": {}}

        def define(trial):
            objective.suggest(trial)
            return {"optuna_number": trial.number}

        class _Search(OptunaSearch):
            """Stores the trial's metrics in the study (same schema as the Optuna backend) before telling."""

            def on_trial_complete(self, trial_id, result=None, error=False):
                record = None
                if result and not error and trial_id in self._ot_trials:
                    # Workers measure accuracy only; everything else comes from the config, here,
                    # exactly as in the Optuna backend.
                    ot_trial = self._ot_trials[trial_id]
                    cfg = objective.config_of(dict(ot_trial.params))
                    metrics = objective.metrics(cfg, result["accuracy"])
                    result = {**result, **metrics.model_dump()}
                    ot_trial.set_user_attr("metrics", metrics.model_dump())
                    ot_trial.set_user_attr("ray_node_id", result["node_id"])
                    record = TrialRecord(
                        number=ot_trial.number,
                        subnet_key=cfg.key(),
                        config=cfg.model_dump(),
                        duration_s=result.get("eval_s"),
                        **metrics.model_dump(),
                    )
                super().on_trial_complete(trial_id, result, error)
                if record is not None:
                    on_trial(record)

            def save(self, checkpoint_path: str) -> None:
                # Trials are durable in the study's RDB storage; nothing else needs checkpointing
                # (and the define-by-run closure holds the whole objective).
                with open(checkpoint_path, "wb") as f:
                    pickle.dump({}, f)

            def restore(self, checkpoint_path: str) -> None:
                return None

            def __reduce__(self):
                # Tuner pickles its config (search_alg included) for Tuner.restore, which jobs never
                # use; by value, this class would drag in the job's callbacks (locks, clients).
                return (_not_restorable, ())

        searcher = _Search(
            space=define,
            metric=["accuracy", "latency_ms"],
            mode=["max", "min"],
            sampler=make_sampler(job),
            study_name=ctx.job_id,
            storage=make_storage(ctx.storage_url),
        )
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        searcher = ConcurrencyLimiter(searcher, max_concurrent=cpus)
        nodes: dict[str, int] = {}
        node_ids: dict[str, int] = {}
        stop = {"flag": False}
        deadline = time.monotonic() + job.timeout_s if job.timeout_s else None

        class _Report(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                nodes[result["node_ip"]] = nodes.get(result["node_ip"], 0) + 1
                node_ids[result["node_id"]] = node_ids.get(result["node_id"], 0) + 1

            def on_step_begin(self, iteration, trials, **info):
                if ctx.should_stop() or (deadline is not None and time.monotonic() > deadline):
                    stop["flag"] = True

            def __reduce__(self):
                # Pickled with the Tuner's run config (see _Search.__reduce__); by value it would
                # drag in ``ctx``, whose callbacks hold the service's worker pool (locks).
                return (_not_restorable, ())

        class _JobStopper(tune.Stopper):
            def __call__(self, trial_id, result):
                return True

            def stop_all(self):
                return stop["flag"]

            def __reduce__(self):
                return (_not_restorable, ())

        storage_path = Path(ctx.output_dir).resolve() / "ray"
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(_trainable, payload=_payload(objective, job, checkpoint_id)), {"cpu": 1}
            ),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"job-{ctx.job_id}",
                storage_path=str(storage_path),
                stop=_JobStopper(),
                callbacks=[_Report(), *_no_file_loggers()],
                verbose=0,
                log_to_file=False,
            ),
        )
        with _no_metrics_files_warning():
            tuner.fit()
        return {"nodes": nodes, "node_ids": node_ids}
    finally:
        disconnect(ray)
