"""``nasprune dashboard JOB``: optuna-dashboard on the trial storage that holds a job's study."""

from __future__ import annotations

import contextlib
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "dashboard",
        help="open optuna-dashboard on a job's trials",
        description=(
            "Serve optuna-dashboard on the trial storage of a job (a 'nasprune serve' job or a 'nasprune search' "
            "one: both keep their trials in <data dir>/trials.journal by default, or in the job database set by "
            "NASPRUNE_DATABASE_URL). The job's study is named by its id; its objectives are val_accuracy and "
            "predicted_latency_ms, its user attributes say the space, device and budget. Read-only use is safe "
            "while the job runs. Stop with Ctrl-C."
        ),
    )
    p.add_argument("job", metavar="JOB", help="the job id (the study's name)")
    p.add_argument("--data-dir", type=Path, help="the data dir the job ran in (default ./.nasprune)")
    p.add_argument("--storage", metavar="URL", help="the trial storage URL instead (journal:///file, sqlite:///...)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(func=_run)


def storage_url(args) -> str:
    if args.storage:
        return args.storage
    from nasprune.settings import Settings

    return Settings(**({"data_dir": args.data_dir} if args.data_dir else {})).trial_storage_url


def study_id(storage, job: str) -> int:
    """The id of the job's study in ``storage``; a clear error naming the flags when it is not there."""
    from nasprune.errors import NasPruneError

    try:
        return storage.get_study_id_from_name(job)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        listed = ", ".join(names[-5:]) if names else "none"
        raise NasPruneError(
            f"no job '{job}' in this trial storage (its last jobs: {listed}); pass the job's --data-dir or --storage"
        ) from None


def _run(args) -> int:
    from nasprune.search.study import make_storage

    url = storage_url(args)
    if url.startswith("journal://") and not Path(url.removeprefix("journal://")).is_file():
        from nasprune.errors import NasPruneError

        raise NasPruneError(
            f"no trial storage at {url.removeprefix('journal://')}; pass the job's --data-dir or --storage"
        )
    storage = make_storage(url)
    sid = study_id(storage, args.job)
    from optuna_dashboard import run_server

    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"optuna-dashboard for job {args.job}: http://{shown}:{args.port}/dashboard/studies/{sid}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_server(storage, host=args.host, port=args.port)
    return 0
