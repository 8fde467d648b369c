"""``nasprune search``: one search job in this process, with a live progress bar."""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

from nasprune.paths import spaces_dir


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="search the Pareto front of accuracy vs latency under a latency budget",
        description=(
            "Sample subnets of the trained supernet, score accuracy (after BatchNorm recalibration) and "
            "predicted latency on the device, and keep the Pareto front. The most accurate candidates are "
            "exported and measured; the recommended model is the most accurate one whose measured latency "
            "is within the budget. Trials are stored durably: rerun with the same --job-id to resume."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", help="space name (see 'nasprune spaces list') or a space YAML file")
    src.add_argument(
        "--model",
        metavar="REF",
        help="prune your own model: torchvision:NAME or PKG.MODULE:FACTORY (local, trusted code; called "
        "with num_classes from --dataset); its search space is derived from its graph",
    )
    p.add_argument(
        "--weights",
        type=Path,
        metavar="FILE.safetensors",
        help="trained weights to start from (default: the space's recorded weights, else the factory's own); with "
        "--space, the space is searched from these instead (checked to fit first)",
    )
    p.add_argument(
        "--dataset",
        help="the dataset to train and score on (e.g. mnist1d, or one added with 'nasprune data add'); "
        "needed with --model; with --space it replaces the space's own (checked to fit first)",
    )
    p.add_argument("--device", default="local-cpu", help="device whose latency table is used (%(default)s)")
    p.add_argument("--budget-ms", type=float, required=True, help="latency budget in ms at batch 1")
    p.add_argument("--trials", type=int, default=100, help="number of trials (%(default)s)")
    p.add_argument("--sampler", choices=["nsga2", "tpe", "random"], default="nsga2")
    p.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    p.add_argument("--ray-address", help="existing Ray cluster (default: a local Ray for the job)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-params", type=int, help="extra constraint: at most this many parameters")
    p.add_argument("--max-macs", type=int, help="extra constraint: at most this many MACs")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32"],
                   help="candidate precisions: fp32 int8 adds int8 candidates (docs/int8.md)")  # fmt: skip
    p.add_argument("--timeout", type=float, help="stop sampling after this many seconds")
    p.add_argument("--refine-trials", type=int, metavar="N",
                   help="of --trials, spend N growing the best candidates towards the budget while the latency "
                        "table says they fit (default: a quarter of the trials; 0: off)")  # fmt: skip
    p.add_argument("--finetune-steps", type=int, metavar="N",
                   help="recovery budget: fine-tune the best verified candidates alone for N steps each, distilled "
                        "from the original model or the largest subnet, and deliver the best when it scores better "
                        "(default: sized to the dataset, 4 epochs within 500-3,000 steps; 0: off)")  # fmt: skip
    p.add_argument("--finetune-epochs", type=float, metavar="E",
                   help="the recovery budget in passes over the train split instead of --finetune-steps")  # fmt: skip
    p.add_argument(
        "--finetune-top-k",
        type=int,
        default=2,
        metavar="K",
        help="fine-tune the first K verified candidates and deliver the most accurate (%(default)s)",
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        metavar="N",
        help="epochs of the supernet's training if this job trains it (default: the recipe's, 30 for images and "
        "sequences, 40 for flat features; a supernet of other epochs is cached apart)",
    )
    p.add_argument("--finetune-seconds", type=float, metavar="S", help="stop fine-tuning after S seconds")
    p.add_argument("--qat-min-drop", type=_fraction_or_off, default=None, metavar="F",
                   help="with --precisions fp32 int8: an int8 recommended model is fine-tuned and quantized again; "
                        "if quantizing cost it more than F of validation accuracy (0.005 = 0.5 pt) the fine-tuning "
                        "is quantization-aware (default: off; it measured no better than float fine-tuning, "
                        "docs/int8.md)")  # fmt: skip
    p.add_argument("--tier0", choices=["auto", "only", "off"], default="auto",
                   help="tier 0, a model pruned to the budget without training (as 'nasprune prune'): auto (default) "
                        "delivers it first, in minutes, when the model has trained weights (--weights, or a space "
                        "that names them), and the job delivers the more accurate verified model of it and the "
                        "search's; only: tier 0 alone, no supernet; off: never")  # fmt: skip
    p.add_argument("--job-id", help="resume this job (default: a new id, 32 hex digits as the service's)")
    p.add_argument(
        "--storage",
        help="Optuna storage: journal:///file, sqlite:///file or a database URL "
        "(default: a journal file in the data dir)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: a local store, <data dir>/mlflow-local/mlflow.db, browsed with "
        "'mlflow ui --backend-store-uri sqlite:///<that file>'); 'none' to log nothing",
    )
    p.add_argument("--data-dir", type=Path, help="data dir (default: $NASPRUNE_DATA_DIR or ./.nasprune)")
    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write pareto.json, pareto.png, the candidates and model.onnx here (default: <data dir>/jobs/ID)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="MODEL.onnx",
        help="also copy the recommended model to this file (as 'submit --wait -o', 'fetch -o', 'prune -o')",
    )
    p.set_defaults(func=_run)


def _derived_space(args, root: Path) -> str:
    """Derive the space of ``--model`` for ``--dataset``, save it under the data dir, return its path."""
    import torch

    from nasprune.cli.model import check_outputs
    from nasprune.data import load_dataset
    from nasprune.errors import GraphError
    from nasprune.graph import build_model, load_weights
    from nasprune.graph.api import derive_space
    from nasprune.graph.models import accepted_kwargs, file_sha256

    if not args.dataset:
        raise GraphError("--model needs --dataset (the data to train and score the pruned model on)")
    ds = load_dataset(args.dataset, data_dir=root)  # a user dataset lies in the data dir
    kwargs = accepted_kwargs(args.model, {"num_classes": ds.num_classes})
    model = build_model(args.model, kwargs)
    if args.weights:
        load_weights(model, args.weights)
    try:
        with torch.no_grad():
            out = model.eval()(ds.tensors("val")[0][:2])
    except Exception as e:  # the user's model on the dataset's samples: say which shapes met
        raise GraphError(f"--model {args.model} does not run on --dataset {args.dataset}'s samples (shape "
                         f"{tuple(ds.input_shape)}): {type(e).__name__}: {e}") from None  # fmt: skip
    check_outputs(args.model, out.shape[-1], args.dataset, ds.num_classes)
    space = derive_space(model, ds.input_shape, model_ref=args.model, model_kwargs=kwargs, dataset=args.dataset)
    name = f"{space.name}_{args.dataset}"
    from nasprune.registry import list_spaces

    if name in list_spaces():  # a registered space of that name keeps its own latency table and files
        name = f"{name}_derived"
    update: dict = {"name": name}
    if args.weights:  # the supernet starts from them, and the space's digest covers their content
        update.update(weights=str(Path(args.weights).resolve()), weights_sha256=file_sha256(args.weights))
    space = space.model_copy(update=update)
    path = spaces_dir(root) / f"{name}.yaml"
    space.save(path)
    print(f"derived space {name}: {len(space.groups)} channel groups, {len(space.sequences)} depth sequences "
          f"(written to {path})")  # fmt: skip
    return str(path)


def _run(args) -> int:
    from pydantic import ValidationError

    from nasprune.errors import ConfigError
    from nasprune.paths import data_dir
    from nasprune.search.job import Constraints, SearchJob

    _check_output(args)
    root = data_dir(args.data_dir)
    space_ref, dataset = _given_space(args, root) if args.space else (_derived_space(args, root), None)
    flags = {"latency_budget_ms": "--budget-ms", "n_trials": "--trials", "timeout_s": "--timeout", "seed": "--seed",
             "finetune_epochs": "--finetune-epochs", "finetune_seconds": "--finetune-seconds",
             "finetune_steps": "--finetune-steps", "finetune_top_k": "--finetune-top-k",
             "refine_trials": "--refine-trials", "train_epochs": "--train-epochs",
             "": "--finetune-steps/--finetune-epochs",
             "qat_min_drop": "--qat-min-drop",
             "constraints.max_params": "--max-params", "constraints.max_macs": "--max-macs"}  # fmt: skip
    try:
        job = _job(SearchJob, Constraints, space_ref, args, dataset)
    except ValidationError as e:  # name the flag, not the job field
        raise ConfigError("; ".join(
            f"{flags.get('.'.join(map(str, err['loc'])), '.'.join(map(str, err['loc'])))}: {err['msg']}"
            for err in e.errors()
        )) from None  # fmt: skip
    return _search(job, args, root)


def _check_output(args) -> None:
    """``-o`` is a model file, as in every command; a folder there is the old meaning, refused saying the new flag."""
    from nasprune.errors import ConfigError

    o = args.output
    if o is not None and (o.is_dir() or str(o).endswith(("/", "\\")) or o.suffix != ".onnx"):
        raise ConfigError(
            f"-o/--output {o}: names the model file now (e.g. -o model.onnx), as in submit, fetch, export and "
            "prune; the job's folder (pareto.json, the plot, the candidates) is --output-dir DIR"
        )


def _given_space(args, root: Path) -> tuple[str, str | None]:
    """``--space`` with ``--weights``/``--dataset`` applied, both checked before anything runs: the space's
    reference (a copy recording the weights, under the data dir, when they are given) and the dataset that
    replaces the space's own (None: the space's)."""
    from nasprune.data import check_dataset_fits
    from nasprune.errors import ConfigError, DatasetError
    from nasprune.registry import load_space

    space = load_space(args.space)
    ref = args.space
    if args.weights is not None:
        ref = _space_with_weights(space, args.weights, root)
        space = load_space(ref)
    else:
        check_recorded_weights(space, args.space)
    name = args.dataset or space.dataset
    if not name:
        raise ConfigError(f"--space {args.space} records no dataset: pass --dataset NAME (a built-in or one added "
                          "with 'nasprune data add'), or save the space with 'nasprune model inspect ... --dataset "
                          "NAME --save FILE'")  # fmt: skip
    try:
        check_dataset_fits(name, space, root)
    except DatasetError as e:
        flag = "--dataset" if args.dataset else f"the dataset '{name}' of --space {args.space}"
        raise ConfigError(f"{flag}: {e}") from None
    return ref, (args.dataset if args.dataset and args.dataset != space.dataset else None)


def check_recorded_weights(space, ref: str) -> None:
    """The weights a space file records are there and are the file it recorded (before anything is built)."""
    from nasprune.errors import ConfigError
    from nasprune.graph.models import file_sha256

    if space.weights is None:
        return
    if not Path(space.weights).is_file():
        raise ConfigError(
            f"--space {ref} records the weights {space.weights}, which are not there (the path is relative to the "
            "space file's folder): put them back, or give --weights FILE.safetensors"
        )
    if file_sha256(space.weights) != space.weights_sha256:
        raise ConfigError(
            f"--space {ref}: {space.weights} is not the weights file it records (sha256 differs): derive the space "
            "again ('nasprune model inspect ... --weights FILE --save FILE.yaml'), or give --weights FILE.safetensors"
        )


def _space_with_weights(space, weights: Path, root: Path) -> str:
    """A copy of ``space`` that starts from ``weights`` (checked to fit its model), written under the data dir."""
    from nasprune.graph import build_model, load_weights
    from nasprune.graph.models import file_sha256

    if not weights.is_file():
        from nasprune.errors import ConfigError

        raise ConfigError(f"--weights {weights}: no such file")
    load_weights(build_model(space.model, space.model_kwargs), weights)  # names the first tensor that does not fit
    sha = file_sha256(weights)
    copy = space.model_copy(update={"weights": str(weights.resolve()), "weights_sha256": sha})
    path = spaces_dir(root) / f"{space.name}-w{sha[:12]}.yaml"
    copy.save(path)
    print(f"space {space.name} with the weights of {weights} (written to {path})")
    return str(path)


def _job(SearchJob, Constraints, space_ref: str, args, dataset: str | None = None):
    return SearchJob(
        space=space_ref,
        dataset=dataset,
        device=args.device,
        latency_budget_ms=args.budget_ms,
        n_trials=args.trials,
        sampler=args.sampler,
        backend=args.backend,
        seed=args.seed,
        timeout_s=args.timeout,
        constraints=Constraints(max_params=args.max_params, max_macs=args.max_macs),
        refine_trials=args.refine_trials,
        train_epochs=args.train_epochs,
        finetune_steps=args.finetune_steps,
        finetune_epochs=args.finetune_epochs,
        finetune_seconds=args.finetune_seconds,
        finetune_top_k=args.finetune_top_k,
        qat_min_drop=args.qat_min_drop,
        precisions=args.precisions,
        tier0=args.tier0,
    )


def _fraction_or_off(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a fraction (e.g. 0.005) nor 'off'") from None


def local_tracking_uri(root: Path) -> str:
    """The default MLflow store of local searches: SQLite under the data dir, artifacts beside it.

    Its own store, not the one ``nasprune serve`` runs its MLflow server on: that server's
    experiments keep artifacts behind ``mlflow-artifacts:/`` URIs, which a client without a server
    cannot write to.
    """
    folder = (root / "mlflow-local").resolve()
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _tracking(args, root: Path) -> str | None:
    import os

    if args.tracking_uri is not None:
        uri = None if args.tracking_uri.lower() == "none" else args.tracking_uri
    else:
        uri = local_tracking_uri(root)
        # A client-side SQLite store puts new experiments' artifacts under ./mlruns of the current folder
        # unless this (MLflow's own server setting, read when a store is made) names a root: here, the
        # data dir. Set in this command's process only, and only when the user has not set it.
        os.environ.setdefault("_MLFLOW_SERVER_ARTIFACT_ROOT", str(root.resolve() / "mlflow-local" / "artifacts"))
    if uri is not None and not uri.startswith(("http://", "https://")):
        # Without a server, MLflow's client-side model registry resolves 'models:/<id>' sources through
        # the process-wide tracking URI, not the client's: point it at the same store (this process only).
        os.environ.setdefault("MLFLOW_TRACKING_URI", uri)
    return uri


def _search(job, args, root) -> int:
    from nasprune.budgets import budget_warnings, latency_range
    from nasprune.cli._common import front_table
    from nasprune.paths import TRIALS_JOURNAL, job_files, jobs_dir
    from nasprune.progress import progress_bar
    from nasprune.search.job import JobContext
    from nasprune.search.runner import run_job
    from nasprune.search.study import journal_url

    job_id = args.job_id or uuid.uuid4().hex
    out = args.output_dir or jobs_dir(root) / job_id
    files = job_files(out)
    storage = args.storage or journal_url(root / TRIALS_JOURNAL)
    tracking_uri = _tracking(args, root)
    bar = progress_bar(job.n_trials, "preparing supernet")
    t0 = time.perf_counter()
    seen: set[str] = set()

    def on_progress(p):
        if p.stage == "searching" and "searching" not in seen:
            seen.add("searching")  # the table exists now: say which budgets make sense
            rng = latency_range(job.space, job.device, root)
            if rng.known:
                bar.write(f"latency range of {job.space} on {job.device}: {rng.describe()} (budget "
                          f"{job.latency_budget_ms:g} ms)")  # fmt: skip
            for w in budget_warnings(job.latency_budget_ms, rng):
                bar.write(f"warning: {w}")
        bar.n = p.n_done
        if p.tier0 is not None and "tier 0" not in seen:
            seen.add("tier 0")  # the job's first result: say so at once, above the bar
            t = p.tier0
            ms = f"measured {t.measured_latency_ms:.4g} ms" if t.measured_latency_ms is not None else "not measured"
            path = files.candidate(t.candidate_id)
            bar.write(f"tier 0 model (no training): validation {t.accuracy:.2%}, test {t.test_accuracy:.2%}, {ms}"
                      f"{' (verified)' if t.verified else ''}; {path}")  # fmt: skip
        if p.stage == "searching":
            best = f"{p.best_accuracy:.2%}@{p.best_latency_ms:.3f}ms" if p.best_accuracy is not None else "none yet"
            bar.set_postfix_str(f"best in budget {best}")
        else:
            bar.set_postfix_str(p.message)
        bar.set_description(p.stage)
        bar.refresh()

    ctx = JobContext(
        job_id=job_id,
        storage_url=storage,
        output_dir=out,
        data_dir=root,
        tracking_uri=tracking_uri,
        ray_address=args.ray_address,
        on_progress=on_progress,
    )
    print(f"job {job_id}: {job.space} on {job.device}, budget {job.latency_budget_ms:g} ms, {job.n_trials} trials")
    try:
        res = run_job(job, ctx, progress_bar=True)
    finally:
        bar.close()
    recommended = res.recommended.candidate_id if res.recommended else None
    shown = [*res.pareto, *([res.tier0] if res.tier0 else [])]  # tier 0's row last
    print(front_table([c.model_dump() for c in shown], recommended, job.latency_budget_ms))
    if res.recommended:
        r = res.recommended
        measured = (f"measured {r.measured_latency_ms:.4f} ms <= {job.latency_budget_ms:g} ms" if r.verified
                    else f"unverified: {r.unverified_reason}")  # fmt: skip
        which = "tier 0, pruned without training" if r.tier == 0 else f"trial {r.trial_number}"
        print(f"recommended: {r.candidate_id} ({which}) accuracy {r.accuracy:.2%}, {measured}")
        print(f"  budget use: {res.budget_use:.0%} of {job.latency_budget_ms:g} ms"
              f"{'' if r.measured_latency_ms is not None else ' (predicted)'}")  # fmt: skip
        if r.delivered is not None:
            print(f"  weights: {r.delivered} (validation {r.inherited_accuracy:.2%} inherited, "
                  f"{r.finetuned_accuracy:.2%} after {r.finetune_steps} fine-tuning steps; "
                  f"test {r.test_accuracy:.2%})")  # fmt: skip
        if res.tier0 is not None and r.tier != 0:
            print(f"  tier 0 (no training) scored {res.tier0.accuracy:.2%} on validation: the search's model won")
    else:
        print("no candidate's measured latency is within the budget; try a larger budget")
    if res.table_error_in_use:
        e = res.table_error_in_use
        print(f"latency table on this job's {e['n']} measured candidate(s): median error {e['median_ape']:.1f}%, "
              f"max {e['max_ape']:.1f}%")  # fmt: skip
        if res.table_drift:
            print(f"warning: {res.table_drift}")
    if res.recommended and args.output is not None and files.model.is_file():
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(files.model.read_bytes())
        print(f"wrote {args.output}")
    print(f"{res.n_trials} trials in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    run_file = files.run_id
    if tracking_uri and run_file.is_file() and not res.tracking_error:
        from nasprune.tracking import public_uri

        run_id = run_file.read_text().strip()
        if tracking_uri.startswith("sqlite:///"):
            print(f"MLflow run {run_id}: browse with 'mlflow ui --backend-store-uri {tracking_uri}'")
        else:
            print(f"MLflow run {run_id} at {public_uri(tracking_uri)}")
    if res.tracking_error:
        print(f"warning: {res.tracking_error}")
    return 0 if res.recommended else 1
