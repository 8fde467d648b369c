"""``nasprune submit | jobs | fetch | cancel``: talk to a running service (see ``nasprune serve``)."""

from __future__ import annotations

import json
from pathlib import Path


def _connection(p) -> None:
    p.add_argument("--url", help="service URL (default $NASPRUNE_URL or http://127.0.0.1:8000)")
    p.add_argument("--token", help="API token (default $NASPRUNE_API_TOKEN)")


def register(sub) -> None:
    s = sub.add_parser(
        "submit",
        help="submit a search job to the service",
        description="Submit a search for the most accurate subnets within a latency budget; prints the job id.",
    )
    s.add_argument("--space", required=True, help="search space name (GET /v1/spaces)")
    s.add_argument("--budget-ms", type=float, required=True, help="latency budget in milliseconds (batch 1)")
    s.add_argument("--device", default="local-cpu", help="device whose latency table is used (%(default)s)")
    s.add_argument("--trials", "--n-trials", dest="n_trials", type=int, default=100, help="trials to run (%(default)s)")
    s.add_argument("--sampler", choices=["nsga2", "tpe", "random"], default="nsga2")
    s.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-params", type=int, help="also limit the parameter count")
    s.add_argument("--max-macs", type=int, help="also limit the MACs")
    s.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    s.add_argument("-o", "--output", type=Path, help="with --wait: download the recommended model here")
    _connection(s)
    s.set_defaults(func=_submit)

    j = sub.add_parser("jobs", help="list jobs, or show one", description="List the service's jobs or show one.")
    j.add_argument("job_id", nargs="?", help="show this job in full (JSON)")
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.add_argument("--limit", type=int, default=20, help="jobs to list (%(default)s)")
    _connection(j)
    j.set_defaults(func=_jobs)

    f = sub.add_parser(
        "fetch",
        help="download a job's model as ONNX",
        description="Download the recommended model of a finished job (or one Pareto candidate) as an ONNX file.",
    )
    f.add_argument("job_id")
    f.add_argument("-o", "--output", type=Path, default=Path("model.onnx"), help="file to write (%(default)s)")
    f.add_argument("--candidate", help="candidate id from the Pareto front (default: the recommended model)")
    _connection(f)
    f.set_defaults(func=_fetch)

    c = sub.add_parser("cancel", help="cancel a job", description="Cancel a job; a running one keeps its trials.")
    c.add_argument("job_id")
    _connection(c)
    c.set_defaults(func=_cancel)


def _client(args):
    from nasprune.client import Client

    return Client(args.url, args.token)


def _submit(args) -> int:
    constraints = {k: v for k, v in (("max_params", args.max_params), ("max_macs", args.max_macs)) if v is not None}
    with _client(args) as c:
        job_id = c.submit(
            args.space,
            args.budget_ms,
            device=args.device,
            n_trials=args.n_trials,
            sampler=args.sampler,
            backend=args.backend,
            seed=args.seed,
            constraints=constraints or None,
        )
        print(job_id, flush=True)
        if not args.wait:
            return 0
        job = c.wait(job_id)
        print(f"job {job_id} {job['status']}: {job['progress'].get('message', '')}")
        if args.output and job["status"] == "succeeded":
            path = c.download_model(job_id, args.output)
            print(f"wrote {path}")
    return 0


def _jobs(args) -> int:
    from nasprune.cli._common import table

    with _client(args) as c:
        if args.job_id:
            print(json.dumps(c.job(args.job_id), indent=2))
            return 0
        page = c.jobs(args.status, limit=args.limit)
    rows = []
    for j in page["items"]:
        p = j["progress"] or {}
        best = j.get("best") or {}
        acc = f"{best['accuracy']:.4f}" if best.get("accuracy") is not None else "-"
        rows.append(
            [
                j["id"],
                j["status"],
                j["spec"]["space"],
                f"{j['spec']['latency_budget_ms']:g}",
                f"{p.get('n_done', 0)}/{p.get('n_total', j['spec']['n_trials'])}",
                p.get("stage", ""),
                acc,
                j["created_at"][:19].replace("T", " "),
            ]
        )
    print(table(rows, ["id", "status", "space", "budget ms", "trials", "stage", "best acc", "created (UTC)"]))
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']} jobs; --limit to see more)")
    return 0


def _fetch(args) -> int:
    with _client(args) as c:
        path = c.download_model(args.job_id, args.output, args.candidate)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


def _cancel(args) -> int:
    with _client(args) as c:
        r = c.cancel(args.job_id)
    print(f"job {r['id']}: {r['message']}")
    return 0
