"""``nasprune submit | jobs | pareto | trials | fetch | cancel``: talk to a running service (see ``nasprune serve``)."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

from nasprune.errors import NasPruneError

# The request's JSON fields and the service's routes, as this CLI spells them (errors name what the user typed).
FLAGS = {
    "latency_budget_ms": "--budget-ms",
    "n_trials": "--trials",
    "space": "--space",
    "model": "--model",
    "dataset": "--dataset",
    "device": "--device",
    "sampler": "--sampler",
    "backend": "--backend",
    "seed": "--seed",
    "constraints.max_params": "--max-params",
    "constraints.max_macs": "--max-macs",
    "candidate_id": "--candidate",
    "refine_trials": "--refine-trials",
    "finetune_steps": "--finetune-steps",
    "finetune_epochs": "--finetune-epochs",
    "finetune_top_k": "--finetune-top-k",
    "train_epochs": "--train-epochs",
    "tier0": "--tier0",
    "num_classes": "--num-classes",
    "input_shape": "--input-shape",
}
ROUTES = [
    (r"GET /v1/jobs/\S+/pareto", "nasprune pareto JOB"),
    (r"GET /v1/jobs/\S+/trials", "nasprune trials JOB"),
    (r"GET /v1/jobs\b", "nasprune jobs"),
    (r"GET /v1/spaces\b", "nasprune spaces list"),
    (r"POST /v1/devices(\?name=NAME)?", "nasprune devices upload NAME TABLE.json"),
    (r"POST /v1/models\b", "nasprune model upload"),
    (r"GET /v1/models\b", "nasprune models list"),
]


class CliServiceError(NasPruneError):
    """A service error reworded for the command line."""


def for_cli(message: str) -> str:
    """A service message with JSON field names replaced by the CLI's flags and routes by commands."""
    for route, command in ROUTES:
        message = re.sub(route, command, message)
    for field, flag in sorted(FLAGS.items(), key=lambda kv: -len(kv[0])):
        if "_" in field or "." in field:  # not plain words ('space', 'device'): those name fields only as 'x: ...'
            message = re.sub(rf"(?<![\w.-]){re.escape(field)}\b(?!\.)", flag, message)
    return message


def _cli_errors(fn):
    from nasprune.client import ServiceError

    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except ServiceError as e:
            body = e.body if isinstance(e.body, dict) else {}
            errs = body.get("errors") or []
            if errs:
                text = "; ".join(f"{FLAGS.get(x['field'], x['field'])}: {x['message']}" for x in errs)
            else:
                text = str(body.get("detail") or e)
            raise CliServiceError(for_cli(text)) from None

    return run


def _connection(p) -> None:
    p.add_argument("--url", help="service URL (default $NASPRUNE_URL or http://127.0.0.1:8000)")
    p.add_argument("--token", help="API token (default $NASPRUNE_API_TOKEN)")


def register(sub) -> None:
    from nasprune.cli._common import retired

    s = sub.add_parser(
        "submit",
        help="submit a search job to the service",
        description=(
            "Submit a search for the most accurate subnets within a latency budget; prints the job id. "
            "'nasprune spaces list' shows the budgets that make sense (the latency range of each space). "
            "With --wait, shows progress, then the Pareto front and the MLflow run, like 'nasprune search'."
        ),
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", help="search space name (see 'nasprune spaces list')")
    src.add_argument(
        "--model",
        metavar="ID|torchvision:NAME",
        help="an uploaded model's id (see 'nasprune models list'), or torchvision:NAME with --weights: uploaded "
        "first (with --dataset's input shape and classes), then searched",
    )
    s.add_argument(
        "--weights",
        type=Path,
        metavar="FILE.safetensors",
        help="with --model torchvision:NAME: your trained weights, uploaded with the job",
    )
    s.add_argument(
        "--dataset",
        help="the dataset to train and score on (a built-in or one uploaded to the service, POST /v1/datasets); "
        "default: the space's or model's own",
    )
    s.add_argument("--budget-ms", type=float, required=True, help="latency budget in milliseconds (batch 1)")
    s.add_argument("--device", default="local-cpu", help="device whose latency table is used (%(default)s)")
    s.add_argument("--trials", dest="n_trials", type=int, default=100, help="trials to run (%(default)s)")
    retired(s, "--n-trials", "is now --trials (as in 'nasprune search')")
    s.add_argument("--sampler", choices=["nsga2", "tpe", "random"], default="nsga2")
    s.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-params", type=int, help="also limit the parameter count")
    s.add_argument("--max-macs", type=int, help="also limit the MACs")
    s.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32"],
                   help="candidate precisions: fp32 int8 adds int8 candidates (docs/int8.md)")  # fmt: skip
    s.add_argument(
        "--refine-trials",
        type=int,
        metavar="N",
        help="of the trials, spend N growing the best candidates towards the budget (default: a quarter)",
    )
    s.add_argument(
        "--finetune-steps",
        type=int,
        metavar="N",
        help="recovery budget per fine-tuned candidate in steps (default: sized to the dataset; 0: off)",
    )
    s.add_argument("--finetune-epochs", type=float, metavar="E", help="the recovery budget in epochs instead")
    s.add_argument(
        "--finetune-top-k",
        type=int,
        metavar="K",
        help="fine-tune K verified candidates and deliver the most accurate (default 2)",
    )
    s.add_argument(
        "--tier0",
        choices=["auto", "only", "off"],
        help="tier 0, the trained weights pruned to the budget without training, as the job's first result: auto "
        "(the service's default) when the model has trained weights; only: tier 0 alone, no supernet; off: never",
    )
    s.add_argument(
        "--train-epochs",
        type=int,
        metavar="N",
        help="epochs of the supernet's training if the job trains it (default: the recipe's, 30-40)",
    )
    s.add_argument("--wait", action="store_true", help="wait for the job, showing progress, then print its front")
    s.add_argument("-o", "--output", type=Path, help="with --wait: download the recommended model here")
    _connection(s)
    s.set_defaults(func=_submit)

    j = sub.add_parser("jobs", help="list jobs, or show one", description="List the service's jobs or show one.")
    j.add_argument("job_id", nargs="?", help="show this job: spec, progress, best so far, links")
    j.add_argument("--json", action="store_true", help="print the service's answer as JSON (for scripts)")
    j.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    j.add_argument("--limit", type=int, default=20, help="jobs to list (%(default)s)")
    _connection(j)
    j.set_defaults(func=_jobs)

    pa = sub.add_parser(
        "pareto",
        help="a finished job's Pareto front as a table",
        description=(
            "Print the Pareto front of a finished job: accuracy, predicted and measured latency, params and "
            "MACs of each candidate, the recommended one marked. Reads the service's job, or a local "
            "'nasprune search' job from the data dir when its folder is there and --url is not given."
        ),
    )
    pa.add_argument("job_id")
    pa.add_argument("--json", action="store_true", help="print the front as JSON (for scripts)")
    pa.add_argument(
        "--data-dir", type=Path, help="where local search jobs are (default: $NASPRUNE_DATA_DIR or ./.nasprune)"
    )
    _connection(pa)
    pa.set_defaults(func=_pareto)

    t = sub.add_parser(
        "trials",
        help="a job's trials as a table",
        description="Print every trial of a job (running or finished): state, accuracy, predicted latency, "
        "whether it is within the budget.",
    )
    t.add_argument("job_id")
    t.add_argument("--json", action="store_true", help="print the trials as JSON (for scripts)")
    _connection(t)
    t.set_defaults(func=_trials)

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

    d = sub.add_parser(
        "devices",
        help="the service's devices and their latency ranges; upload a table as a device",
        description=(
            "List the service's devices with the predicted latency range of each space on each (the budgets "
            "that make sense), or upload a latency table measured on your own hardware as a device."
        ),
    )
    ds = d.add_subparsers(dest="devices_cmd", metavar="ACTION", required=True)
    dl = ds.add_parser(
        "list", help="devices and latency ranges", description="The service's devices, one line per space."
    )
    dl.add_argument("--json", action="store_true", help="print the service's answer as JSON (for scripts)")
    _connection(dl)
    dl.set_defaults(func=_devices)
    du = ds.add_parser(
        "upload",
        help="upload a latency table as a device",
        description="Upload a table written by 'nasprune lut build --device NAME' on that device.",
    )
    du.add_argument("name", help="the device's name in jobs (lowercase letters, digits, '_', '.', '-')")
    du.add_argument("table", type=Path, help="the table file (JSON)")
    _connection(du)
    du.set_defaults(func=_upload_device)

    c = sub.add_parser("cancel", help="cancel a job", description="Cancel a job; a running one keeps its trials.")
    c.add_argument("job_id")
    _connection(c)
    c.set_defaults(func=_cancel)


def _client(args):
    from nasprune.client import Client

    return Client(args.url, args.token)


def mlflow_link(base_url: str, job: dict) -> str | None:
    """The job's MLflow run as a full URL (a link relative to the service gets its address)."""
    url = job.get("mlflow_run_url") or (job.get("links") or {}).get("mlflow")
    if url and url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


@_cli_errors
def _submit(args) -> int:
    from nasprune.errors import ConfigError

    if args.space and (args.space.endswith((".yaml", ".yml")) or "/" in args.space):
        raise ConfigError(
            f"--space {args.space}: a service searches its own spaces ('nasprune spaces list' there, GET /v1/spaces) "
            f"and uploaded models ('nasprune model upload'); search a space file here with 'nasprune search --space "
            f"{args.space}'"
        )
    if args.weights is not None and not args.model:
        raise ConfigError(
            "--weights goes with --model torchvision:NAME (a space's supernet starts from its own weights)"
        )
    if args.output is not None and not args.wait:
        raise ConfigError(
            "-o/--output needs --wait (the model exists once the job has finished); or submit now and "
            "download it later with 'nasprune fetch JOB -o FILE'"
        )
    constraints = {k: v for k, v in (("max_params", args.max_params), ("max_macs", args.max_macs)) if v is not None}
    with _client(args) as c:
        model = _model_id(c, args) if args.model else None
        answer = c.submit_job(
            args.space,
            args.budget_ms,
            device=args.device,
            n_trials=args.n_trials,
            sampler=args.sampler,
            backend=args.backend,
            seed=args.seed,
            constraints=constraints or None,
            **({"precisions": args.precisions} if args.precisions != ["fp32"] else {}),
            **({"model": model} if model else {}),
            **({"dataset": args.dataset} if args.dataset else {}),
            **{
                k: v
                for k in (
                    "refine_trials",
                    "finetune_steps",
                    "finetune_epochs",
                    "finetune_top_k",
                    "train_epochs",
                    "tier0",
                )
                if (v := getattr(args, k)) is not None
            },
        )
        job_id = answer["id"]
        print(job_id, flush=True)
        for w in answer.get("warnings") or []:
            print(f"warning: {for_cli(w)}", file=sys.stderr, flush=True)
        if not args.wait:
            return 0
        job = c.wait(job_id)
        print(f"job {job_id} {job['status']}: {job['progress'].get('message', '')}".rstrip(": "))
        if job["status"] != "succeeded":
            return 1
        front = c.pareto(job_id)
        _print_front(front, c.base_url, job)
        if args.output:
            path = c.download_model(job_id, args.output)
            print(f"wrote {path}")
    return 0 if front.get("recommended_id") else 1


MODEL_ID = re.compile(r"m_[0-9a-f]{16}")


def _model_id(c, args) -> str:
    """``--model``'s uploaded model id: given as one, or ``torchvision:NAME`` + ``--weights`` uploaded now."""
    from nasprune.errors import ConfigError

    if MODEL_ID.fullmatch(args.model):
        if args.weights is not None:
            raise ConfigError(f"--weights: model {args.model} was uploaded with its weights; give only --model")
        return args.model
    if not args.model.startswith("torchvision:"):
        raise ConfigError(
            f"--model {args.model}: the service runs no code of yours; give an uploaded model's id (m_ and 16 hex "
            "digits, see 'nasprune models list') or torchvision:NAME with --weights; search your own code locally "
            f"with 'nasprune search --model {args.model} --dataset NAME --budget-ms MS'"
        )
    if args.weights is None or not args.dataset:
        raise ConfigError(
            f"--model {args.model} needs --weights FILE.safetensors and --dataset NAME (the upload takes the "
            "dataset's input shape and classes); or upload it with 'nasprune model upload'"
        )
    m = upload(c, args.model, args.weights, args.dataset)
    print(f"uploaded {args.model} with {args.weights}: model {m['id']}", file=sys.stderr, flush=True)
    return m["id"]


def upload(c, architecture: str, weights: Path, dataset: str | None, num_classes: int | None = None,
           input_shape: str | None = None) -> dict:  # fmt: skip
    """Upload ``weights`` of ``architecture``, taking the input shape and classes from ``dataset`` where not given."""
    from nasprune.errors import ConfigError

    if not weights.is_file():
        raise ConfigError(f"--weights {weights}: no such file")
    if dataset and (num_classes is None or input_shape is None):
        info = c.dataset(dataset)
        num_classes = num_classes if num_classes is not None else info["num_classes"]
        input_shape = input_shape or ",".join(map(str, info["input_shape"]))
    if num_classes is None or input_shape is None:
        raise ConfigError("give --dataset (its input shape and classes) or both --input-shape and --num-classes")
    return c.upload_model(architecture, weights, num_classes, input_shape, dataset or "")


def _print_front(front: dict, base_url: str | None, job: dict | None) -> None:
    from nasprune.cli._common import front_table

    cands = front["candidates"] + ([front["tier0"]] if front.get("tier0") else [])  # tier 0's row last
    budget = front["latency_budget_ms"]
    print(front_table(cands, front.get("recommended_id"), budget))
    rec = next((c for c in cands if c["candidate_id"] == front.get("recommended_id")), None)
    if rec is not None:
        if rec.get("verified"):
            lat = f"measured {rec['measured_latency_ms']:.4f} ms <= {budget:g} ms"
        else:
            lat = f"predicted {rec['latency_ms']:.4f} ms (unverified: {rec.get('unverified_reason') or 'not measured'})"
        test = f", test {rec['test_accuracy']:.2%}" if rec.get("test_accuracy") is not None else ""
        what = f"{rec['candidate_id']} (trial {rec['trial_number']}) accuracy {rec['accuracy']:.2%}{test}"
        print(f"recommended: {what}, {lat}")
        if front.get("budget_use") is not None:
            print(f"  budget use: {front['budget_use']:.0%} of {budget:g} ms")
    else:
        print("no candidate's measured latency is within the budget; try a larger budget")
    print(f"{front['n_trials']} trials; budget {budget:g} ms")
    link = mlflow_link(base_url, job) if job is not None and base_url else None
    if link:
        print(f"MLflow run: {link}")
    if front.get("tracking_error"):
        print(f"warning: {front['tracking_error']}")


@_cli_errors
def _jobs(args) -> int:
    from nasprune.cli._common import table

    with _client(args) as c:
        if args.job_id:
            job = c.job(args.job_id)
            print(json.dumps(job, indent=2) if args.json else _describe_job(job, c.base_url))
            return 0
        page = c.jobs(args.status, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
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


def _describe_job(job: dict, base_url: str) -> str:
    spec, p = job["spec"], job.get("progress") or {}
    best = job.get("best") or {}
    lines = [
        f"job       {job['id']}: {job['status']}" + (" (cancel requested)" if job.get("cancel_requested") else ""),
        f"search    {spec['space']} on {spec['device']}, budget {spec['latency_budget_ms']:g} ms, "
        f"{spec['n_trials']} trials ({spec['sampler']}, {spec['backend']}, seed {spec['seed']})",
        f"progress  {p.get('stage', '')}: {p.get('n_done', 0)}/{p.get('n_total') or spec['n_trials']} trials"
        + (f", {p['message']}" if p.get("message") else ""),
    ]
    if best.get("accuracy") is not None:
        lines.append(f"best      accuracy {best['accuracy']:.2%} at {best['latency_ms']:.4f} ms (predicted)")
    times = [
        f"{k} {job[f'{k}_at'][:19].replace('T', ' ')}" for k in ("created", "started", "finished") if job.get(f"{k}_at")
    ]
    lines.append(
        f"times     {', '.join(times)} (UTC)" + (f"; attempt {job['attempts']}" if job.get("attempts", 1) > 1 else "")
    )
    if job.get("error"):
        lines.append(f"error     {job['error']}")
    if job.get("tracking_error"):
        lines.append(f"warning   {job['tracking_error']}")
    link = mlflow_link(base_url, job)
    if link:
        lines.append(f"MLflow    {link}")
    if job["status"] == "succeeded":
        lines.append(f"next      nasprune pareto {job['id']}; nasprune fetch {job['id']} -o model.onnx")
    else:
        lines.append(f"next      nasprune trials {job['id']}")
    return "\n".join(lines)


def _local_result(args) -> dict | None:
    """The front of a local 'nasprune search' job, in the shape the service answers, if it is there."""
    from nasprune.paths import job_files, jobs_dir

    if args.url is not None or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", args.job_id):  # a folder name
        return None
    path = job_files(jobs_dir(args.data_dir) / args.job_id).result
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    rec = res.get("recommended")
    return {
        "job_id": args.job_id,
        "status": "succeeded",
        "latency_budget_ms": res["job"]["latency_budget_ms"],
        "n_trials": res["n_trials"],
        "recommended_id": rec["candidate_id"] if rec else None,
        "budget_use": res.get("budget_use"),
        "candidates": res["pareto"],
        "table_error": res.get("table_error"),
        "tracking_error": res.get("tracking_error"),
    }


@_cli_errors
def _pareto(args) -> int:
    front = _local_result(args)
    job = base = None
    if front is None:
        with _client(args) as c:
            front = c.pareto(args.job_id)
            job, base = c.job(args.job_id), c.base_url
    if args.json:
        print(json.dumps(front, indent=2))
        return 0
    _print_front(front, base, job)
    return 0


@_cli_errors
def _trials(args) -> int:
    from nasprune.cli._common import table

    with _client(args) as c:
        items = c.all_trials(args.job_id)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    rows = []
    for t in items:
        values = t.get("values") or [None, None]
        attrs = t.get("user_attrs") or {}
        m = attrs.get("metrics") if isinstance(attrs.get("metrics"), dict) else {}
        feasible = {True: "yes", False: "no"}.get(m.get("feasible"), "")
        rows.append(
            [
                t["number"],
                str(t["state"]).lower(),
                "" if values[0] is None else f"{values[0]:.2%}",
                "" if len(values) < 2 or values[1] is None else f"{values[1]:.4f}",
                feasible,
                f"{m['params']:,}" if isinstance(m.get("params"), int) else "",
                f"{m['macs']:,}" if isinstance(m.get("macs"), int) else "",
                attrs.get("subnet_key", ""),
            ]
        )
    print(table(rows, ["trial", "state", "val acc", "pred ms", "feasible", "params", "MACs", "subnet"]))
    print(f"({len(items)} trials)")
    return 0


@_cli_errors
def _fetch(args) -> int:
    with _client(args) as c:
        path = c.download_model(args.job_id, args.output, args.candidate)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


@_cli_errors
def _cancel(args) -> int:
    with _client(args) as c:
        r = c.cancel(args.job_id)
    print(f"job {r['id']}: {r['message']}")
    return 0


@_cli_errors
def _devices(args) -> int:
    from nasprune.cli._common import table

    with _client(args) as c:
        devices = c.devices()
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    rows, hints = [], []
    for d in devices:
        for i, r in enumerate(d.get("latency") or [{"space": "-", "min_ms": None, "max_ms": None}]):
            known = r.get("min_ms") is not None and r.get("max_ms") is not None
            span = f"{r['min_ms']:.4g} .. {r['max_ms']:.4g}" if known else "no table"
            if not known and r.get("missing"):
                hints.append(f"{r['space']} on {d['name']}: {r['missing']}")
            rows.append([d["name"] if i == 0 else "", r["space"], span])
    print(table(rows, ["device", "space", "latency ms"]))
    if hints:
        print("\nno latency table yet:")
        print("\n".join(f"  {h}" for h in hints))
    return 0


@_cli_errors
def _upload_device(args) -> int:
    from nasprune.errors import ConfigError

    if not args.table.is_file():
        raise ConfigError(f"table file '{args.table}' does not exist (write one with 'nasprune lut build')")
    with _client(args) as c:
        d = c.upload_device(args.name, args.table)
    ranges = ", ".join(
        f"{r['space']} {r['min_ms']:.4g} .. {r['max_ms']:.4g} ms"
        for r in d.get("latency") or []
        if r.get("min_ms") is not None
    )
    print(f"device {d['name']}: {', '.join(d['spaces'])}" + (f" ({ranges})" if ranges else ""))
    return 0
