"""nasprune against Torch-Pruning on a model trained here, at the same *measured* latency.

1. Train a plain PyTorch model, the "user's trained model" (``--target``):
   - ``resnet_mnist`` (``nasprune/models/resnet_mnist.py``) on mnist5k, the built-in space;
   - ``cnn1d_mnist1d`` (``nasprune/models/cnn1d.py``) on MNIST-1D, the built-in space where the
     architecture matters;
   - ``user``: ``benchmarks/user_model.py:dwse_net`` on mnist5k, a model nasprune has never seen
     (depthwise convs, squeeze-excite, inverted residuals); its space is *derived from its graph*
     here (``nasprune.graph.api.derive_space``, the defaults a user gets from ``nasprune model inspect``).
   Its weights go to a safetensors file.
2. nasprune: convert it (the space with these weights), train the supernet from them
   (original model as the distillation teacher), search each budget, deliver the recommended model
   (exported and verified by the job). Its cost is the supernet training plus that budget's search.
3. Torch-Pruning 1.6 (``pip install torch-pruning==1.6.1 --no-deps``; a benchmark extra, never a
   runtime dependency): global pruning, ``round_to=8``, LAMP and group-magnitude importance (L2),
   the pruning ratio bisected until the pruned model's latency, timed interleaved with the original's,
   is within the budget's share of it, then
   fine-tuned on the same train split for the same wall-clock time nasprune spent.
4. Every delivered model is exported to ONNX and timed interleaved (onnxruntime, 1 thread, batch 1)
   in one session set; test accuracy on the held-out test split with the binomial standard error.
   nasprune's model is what the job delivers (fine-tuned alone after the search when that scored
   better on validation, ``finetune_epochs``; its time counts).

Budgets are fractions of the original's measured latency (15%, 25%, 30% and 50% by default: the two
issues' budgets). Every final model is scored from its ONNX file on the same test images, with the
exact McNemar test of each against nasprune's. Also reported:
the uniform-width subnet of the same supernet under each budget (no search), inherited weights: the
widest width multiplier within the budget at full depth, or at minimum depth where none fits at full depth.

    .venv/bin/python benchmarks/vs_torch_pruning.py [--target resnet_mnist|cnn1d_mnist1d|user]
        [--budgets 0.25 0.5] [--epochs N] [--supernet-epochs 10]

Writes benchmarks/results/vs_torch_pruning.json (resnet_mnist) or vs_torch_pruning_<target>.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _util import write as save_results

from nasprune.data import load_dataset, random_shift
from nasprune.errors import BudgetError
from nasprune.evaluate import Evaluator, accuracy_of
from nasprune.export import export_model
from nasprune.graph import build_model, load_weights
from nasprune.graph.api import derive_space
from nasprune.graph.models import file_sha256
from nasprune.latency.store import get_table
from nasprune.latency.timing import feed_for, make_session, measure_model, time_interleaved
from nasprune.registry import load_space
from nasprune.search.job import JobContext, SearchJob
from nasprune.search.runner import run_job
from nasprune.search.study import journal_url
from nasprune.train import TrainConfig, _batches, _sgd, save_checkpoint, supernet_path, train_supernet

HERE = Path(__file__).resolve().parent
# target -> (model reference, dataset, input shape, built-in space or None to derive it, epochs of the original)
TARGETS = {
    "resnet_mnist": ("nasprune.models.resnet_mnist:resnet_mnist", "mnist5k", (1, 28, 28), "resnet_mnist", 8),
    "cnn1d_mnist1d": ("nasprune.models.cnn1d:cnn1d", "mnist1d", (1, 40), "cnn1d_mnist1d", 30),
    "user": ("user_model:dwse_net", "mnist5k", (1, 28, 28), None, 8),
    # Fashion-MNIST (54,000 train / 6,000 val / 10,000 test): data where the architecture matters
    "fashion_user": ("user_model:dwse_net", "fashion_mnist", (1, 28, 28), None, 8),
    "fashion_resnet20": ("fashion_models:resnet20", "fashion_mnist", (1, 28, 28), None, 8),
    "fashion_mobilenet_v2": ("fashion_models:mobilenet_v2_28", "fashion_mnist", (1, 28, 28), None, 8),
}
SHAPE: tuple[int, ...] = (1, 28, 28)  # the target's input shape, set in main()


def train_plain(model, ds, epochs: int, seed: int = 0, seconds: float | None = None, lr: float = 0.05,
                steps: int | None = None):  # fmt: skip
    """SGD (nesterov, cosine) with the supernet recipe's augmentation, for ``steps`` (or ``epochs``);
    for ``seconds`` if given (the number of steps is set from the first steps' speed so that the
    schedule completes)."""
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    per_epoch = len(_batches(ds, cfg, 0))
    steps = steps if steps is not None else epochs * per_epoch
    t0 = time.perf_counter()
    if seconds is not None:  # measure the step rate on a few steps, then fix the schedule's length
        probe = copy.deepcopy(model)
        opt, _ = _sgd(probe.parameters(), cfg, 10)
        for i, (x, y) in enumerate(_batches(ds, cfg, 0)):
            if i == 5:
                break
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(probe(x), y).backward()
            opt.step()
        rate = 5 / (time.perf_counter() - t0)
        steps = max(1, int(rate * (seconds - (time.perf_counter() - t0))))
    opt, sched = _sgd(model.parameters(), cfg, steps)
    done, epoch = 0, 0
    while done < steps:
        for x, y in _batches(ds, cfg, epoch):
            if done >= steps or (seconds is not None and time.perf_counter() - t0 >= seconds):
                steps = done  # the wall clock is the budget: a machine that slows down does not extend it
                break
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(random_shift(x, cfg.max_shift, gen)), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            done += 1
        epoch += 1
    return model.eval(), time.perf_counter() - t0, done


def onnx_ms(model, folder: Path, name: str, runs: int = 300) -> tuple[Path, float]:
    path = folder / f"{name}.onnx"
    export_model(copy.deepcopy(model).eval(), SHAPE, path)
    return path, measure_model(path, runs=runs, warmup=30).median_ms


def share_of(path: Path, reference: Path, rounds: int = 30) -> float:
    """``path``'s latency as a share of ``reference``'s, timed interleaved (a ratio holds on a busy machine
    where absolute times drift: probes timed alone under changing load misled the bisection by ~40%)."""
    sessions = [make_session(p) for p in (path, reference)]
    t, ref = time_interleaved(sessions, [feed_for(x) for x in sessions], rounds=rounds, burst=5, warmup=10)
    return t.median_ms / ref.median_ms


def tp_prune(original, importance: str, target_share: float, folder: Path):
    """Bisect Torch-Pruning's global pruning ratio to the least pruning whose latency, timed interleaved
    with the original's, is at most ``target_share`` of it."""
    import torch_pruning as tp

    def pruned(ratio: float):
        model = copy.deepcopy(original).eval()
        imp = tp.importance.LAMPImportance(p=2) if importance == "lamp" else tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, *SHAPE), importance=imp, global_pruning=True, pruning_ratio=ratio,
            round_to=8, ignored_layers=[head(model)],
        )  # fmt: skip
        pruner.step()
        return model

    lo, hi, best, tries = 0.0, 0.95, None, []
    for _ in range(8):
        mid = (lo + hi) / 2
        model = pruned(mid)
        path, _ = onnx_ms(model, folder, f"tp_{importance}_probe", runs=1)
        share = share_of(path, folder / "original.onnx")
        tries.append({"ratio": round(mid, 4), "share": share})
        if share <= target_share:
            best, hi = (mid, model, share), mid
        else:
            lo = mid
    if best is None:  # no ratio reached the budget: keep the fastest probe (latency is not monotonic in the
        # ratio: at extreme ratios global pruning stops pruning and the model runs at ~100% of the original)
        fastest = min(tries, key=lambda t: t["share"])
        best = (fastest["ratio"], pruned(fastest["ratio"]), fastest["share"])
    return best, tries


def original_model(ref: str, ds, weights: Path | None, epochs: int, seed: int, stem: Path):
    """The user's trained model (eval mode), its safetensors file and its training seconds: loaded from
    ``weights`` (None seconds), or trained here for ``epochs`` and saved to ``stem.safetensors``."""
    model = build_model(ref, {"num_classes": 10})
    if weights:
        load_weights(model, weights)
        return model.eval(), weights, None
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model, seconds, _ = train_plain(model, ds, epochs, seed)
    path = stem.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), path, seconds


def head(model) -> torch.nn.Linear:
    """The classifier (the last Linear), which keeps its outputs."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def correct_onnx(path: Path, x: torch.Tensor, y: torch.Tensor) -> list[bool]:
    """Per test image: does the ONNX model (what a user deploys) classify it right?"""
    sess = make_session(path)
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(y), 500):
        (logits,) = sess.run(None, {name: x[i : i + 500].numpy()})
        out += (logits.argmax(1) == y[i : i + 500].numpy()).tolist()
    return out


def mcnemar(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value for two classifiers on the same images."""
    only_a = sum(1 for u, v in zip(a, b, strict=True) if u and not v)
    only_b = sum(1 for u, v in zip(a, b, strict=True) if v and not u)
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default="resnet_mnist",
        help="the trained model and data (see above); 'user' derives the space from the model's graph",
    )
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.15, 0.25, 0.3, 0.5],
                    help="fractions of the original's measured latency")  # fmt: skip
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs of the original model (default: 8, 30 for cnn1d_mnist1d)",
    )
    ap.add_argument("--supernet-epochs", type=int, default=10, help="supernet epochs from the trained weights")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds of the final models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune-steps", type=int, default=None,
                    help="the job's recovery budget per fine-tuned candidate (default: the job's own, sized to the "
                    "dataset); its time counts")  # fmt: skip
    ap.add_argument("--regimes", nargs="+", choices=["steps", "wall"], default=["steps", "wall"],
                    help="Torch-Pruning's fine-tuning: 'steps' as many steps as nasprune's delivered model got "
                    "(architecture quality), 'wall' nasprune's whole wall time for that budget (what a user waits)")
    ap.add_argument("--wall-budgets", type=float, nargs="+", default=None,
                    help="run the 'wall' regime only at these budgets (default: every budget)")
    ap.add_argument("--wall-importances", nargs="+", choices=["lamp", "group_magnitude"], default=None,
                    help="run the 'wall' regime only with these importances (default: every one of --importances)")
    ap.add_argument("--importances", nargs="+", choices=(IMPS := ["lamp", "group_magnitude"]), default=IMPS,
                    help="Torch-Pruning's importance criteria (global pruning, round_to=8)")  # fmt: skip
    ap.add_argument("--train-samples", type=int, default=None,
                    help="train everything on a stratified subset of this many train images, registered as a "
                    "user dataset with the val and test splits kept whole (default: the whole train split)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="the original's safetensors from an earlier run with the same --target, --train-samples "
                    "and --seed (default: train it here; --epochs)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (timing uses 1 thread)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global SHAPE
    ref, dataset, SHAPE, builtin, default_epochs = TARGETS[args.target]
    args.epochs = args.epochs or default_epochs
    # the user's model is imported by reference (user_model:dwse_net), here and in any worker process
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)

    tmp = Path(tempfile.mkdtemp(prefix="vs_tp_"))
    root = tmp / "data"
    ds = load_dataset(dataset)
    if args.train_samples:
        dataset, ds = as_user_dataset(ds, args.train_samples, root)
    xt, yt = ds.tensors("test")
    n_test = len(yt)
    out: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "n_test": n_test}

    # 1. the user's trained model (trained here, or the weights of an earlier run of this script or tier0.py)
    original, weights, t_orig = original_model(ref, ds, args.weights, args.epochs, args.seed, tmp / args.target)
    _, orig_ms = onnx_ms(original, tmp, "original")
    out["original"] = {"test_accuracy": accuracy_of(original, xt, yt), "ms": orig_ms, "train_s": t_orig}
    trained = f"trained in {t_orig:.0f} s" if t_orig is not None else f"weights {args.weights}"
    print(f"original: {out['original']['test_accuracy']:.2%} test, {orig_ms:.4f} ms, {trained}")

    # 2. nasprune: supernet from the trained weights, one search per budget
    if builtin:
        base = load_space(builtin)
    else:  # derived from the trained model's graph, with the defaults `nasprune model inspect` uses
        base = derive_space(copy.deepcopy(original), SHAPE, ref, name=args.target, dataset=dataset,
                            model_kwargs={"num_classes": 10})  # fmt: skip
        out["derived_groups"] = {k: v.widths for k, v in base.groups.items()}
        print(f"derived space: {len(base.groups)} channel groups, {len(base.sequences)} depth sequences")
    space = base.model_copy(update={"name": f"{args.target}_trained", "weights": str(weights),
                                    "weights_sha256": file_sha256(weights)})  # fmt: skip
    space_file = tmp / f"{args.target}_trained.yaml"
    space.save(space_file)
    space = load_space(space_file)
    t0 = time.perf_counter()
    res = train_supernet(space, TrainConfig(epochs=args.supernet_epochs, seed=args.seed), ds, progress=True)
    t_supernet = time.perf_counter() - t0
    save_checkpoint(res.supernet, supernet_path(space, root))
    t0 = time.perf_counter()
    table = get_table(space, data_dir=root)
    t_table = time.perf_counter() - t0
    out["nasprune_supernet_s"], out["table_s"] = t_supernet, t_table
    ev = Evaluator(res.supernet.eval(), ds)

    finals: dict[str, Path] = {"original": tmp / "original.onnx"}
    rows: dict[str, dict] = {}
    for frac in args.budgets:
        budget = frac * orig_ms
        tag = f"{round(frac * 100)}%"
        t0 = time.perf_counter()
        job = SearchJob(space=str(space_file), latency_budget_ms=budget, n_trials=args.trials, seed=args.seed,
                        finetune_steps=args.finetune_steps)  # fmt: skip
        ctx = JobContext(f"vs_tp_{tag.rstrip('%')}", journal_url(tmp / f"trials_{tag.rstrip('%')}.journal"),
                         tmp / f"out_{tag.rstrip('%')}", data_dir=root)  # fmt: skip
        try:
            result = run_job(job, ctx)
        except BudgetError as e:  # below the derived space's fastest subnet: recorded, Torch-Pruning still runs
            result = None
            print(f"[{tag}] nasprune: cannot reach the budget: {e}")
        t_search = time.perf_counter() - t0
        spent = t_supernet + t_search
        rec = result.recommended if result is not None else None
        row = {"budget_ms": budget, "nasprune_s": spent, "search_s": t_search,
               "budget_use": result.budget_use if result is not None else None}  # fmt: skip
        if result is None:
            row["nasprune"] = {"unreachable": True}
        elif rec is not None:
            acc = rec.test_accuracy
            finals[f"nasprune@{tag}"] = ctx.output_dir / "model.onnx"
            row["nasprune"] = {"test_accuracy": acc, "config": rec.config, "params": rec.params,
                               "verified": rec.verified, "delivered": rec.delivered,
                               "inherited_test_accuracy": rec.inherited_test_accuracy,
                               "finetuned_test_accuracy": rec.finetuned_test_accuracy,
                               "finetune_steps": rec.finetune_steps, "budget_use": result.budget_use,
                               "tuned": [{"id": c.candidate_id, "val": c.accuracy, "test": c.test_accuracy,
                                          "inherited_val": c.inherited_accuracy, "ms": c.measured_latency_ms}
                                         for c in result.pareto if c.finetuned_accuracy is not None]}  # fmt: skip
            weights = rec.delivered or ("tier 0" if rec.tier == 0 else "inherited")
            print(f"[{tag}] nasprune: {acc:.2%} test ({weights} weights, "
                  f"{rec.finetune_steps} steps), {rec.params:,} params, {result.budget_use:.0%} of the budget, "
                  f"{spent:.0f} s")  # fmt: skip
        else:
            row["nasprune"] = None
            print(f"[{tag}] nasprune: no recommended model under {budget:.4f} ms")
        # the job's first result: the trained weights pruned without training (issue 26)
        t0m = result.tier0 if result is not None else None
        if t0m is not None:
            finals[f"tier0@{tag}"] = ctx.output_dir / "models" / f"{t0m.candidate_id}.onnx"
            row["tier0"] = {"test_accuracy": t0m.test_accuracy, "val_accuracy": t0m.accuracy, "config": t0m.config,
                            "params": t0m.params, "verified": t0m.verified,
                            "delivered": rec is not None and rec.tier == 0}  # fmt: skip
            print(f"[{tag}] tier 0 (no training): {t0m.test_accuracy:.2%} test, {t0m.params:,} params"
                  f"{', delivered by the job' if row['tier0']['delivered'] else ''}")  # fmt: skip
        # uniform width (no search): the widest uniform subnet the table predicts within the budget, at
        # full depth, or at the minimum depth where no full-depth one fits
        fracs = sorted({w / max(c) for c in base.width_layers().values() for w in c}, reverse=True)
        min_depths = {s: min(c) for s, c in space.depth_choices().items()}
        uniforms = [space.uniform(f) for f in fracs]
        uniforms += [space.config(min_depths, u.widths) for u in uniforms]
        uni = next((u for u in uniforms if table.predict(u) <= budget), None)
        if uni is not None:
            row["uniform"] = {"test_accuracy": ev.accuracy(uni, "test"), "config": uni.model_dump(),
                              "full_depth": uni.depths == space.largest().depths}  # fmt: skip
            path, _ = onnx_ms(ev.subnet(uni), tmp, f"uniform_{tag.rstrip('%')}")  # BN recalibrated, as scored
            finals[f"uniform@{tag}"] = path
        # Torch-Pruning, fine-tuned (a) for as many steps as nasprune's delivered model got, (b) for nasprune's
        # whole wall time for this budget (supernet training + search + fine-tuning)
        ft_steps = (rec.finetune_steps if rec is not None else None) or job.finetune_plan(
            len(ds.tensors("train")[1]), TrainConfig().batch_size)
        for imp in args.importances:
            t0 = time.perf_counter()
            (ratio, pruned, ms), tries = tp_prune(original, imp, frac, tmp)
            prune_s = time.perf_counter() - t0
            for regime in args.regimes:
                if regime == "wall" and args.wall_budgets and not any(math.isclose(frac, b) for b in args.wall_budgets):
                    continue
                if regime == "wall" and args.wall_importances and imp not in args.wall_importances:
                    continue
                limit = {"steps": ft_steps} if regime == "steps" else {"seconds": spent}
                model, ft_s, steps = train_plain(copy.deepcopy(pruned), ds, epochs=1, seed=args.seed, lr=0.01,
                                                 **limit)  # fmt: skip
                acc = accuracy_of(model, xt, yt)
                path, _ = onnx_ms(model, tmp, f"tp_{imp}_{regime}_{tag.rstrip('%')}")
                finals[f"tp-{imp}-{regime}@{tag}"] = path
                row[f"tp_{imp}_{regime}"] = {"test_accuracy": acc, "ratio": ratio, "probe_share": ms,
                                             "fine_tune_s": ft_s, "steps": steps, "prune_s": prune_s,
                                             "params": sum(p.numel() for p in model.parameters()),
                                             "bisection": tries}  # fmt: skip
                print(f"[{tag}] torch-pruning {imp} ({regime}): {acc:.2%} test, ratio {ratio:.3f}, {steps} steps, "
                      f"fine-tuned {ft_s:.0f} s")  # fmt: skip
        rows[tag] = row
    out["budgets"] = rows

    # 4. every final model timed against the others, interleaved
    names = list(finals)
    sessions = [make_session(finals[n]) for n in names]
    timings = time_interleaved(sessions, [feed_for(s) for s in sessions], rounds=args.rounds, burst=5, warmup=20)
    out["measured_ms"] = {n: t.median_ms for n, t in zip(names, timings, strict=True)}
    correct = {n: correct_onnx(finals[n], xt, yt) for n in names}  # every model scored as deployed
    print("\nbudget  model                 test acc (+-SE)    measured ms   share of original  McNemar p vs nasprune")
    orig_t = out["measured_ms"]["original"]
    for tag, row in rows.items():
        labels = [("nasprune", "nasprune"), ("tier0", "tier0"), ("uniform", "uniform")]
        labels += [(k, k.replace("_", "-").replace("group-magnitude", "group_magnitude")) for k in row
                   if k.startswith("tp_")]  # fmt: skip
        for key, label in labels:
            r = row.get(key)
            name = f"{label}@{tag}"
            if not r or name not in out["measured_ms"]:
                continue
            acc, ms = sum(correct[name]) / n_test, out["measured_ms"][name]
            r["onnx_test_accuracy"], r["measured_ms"], r["se"] = acc, ms, binomial_se(acc, n_test)
            ours = f"nasprune@{tag}"
            p = mcnemar(correct[ours], correct[name]) if ours in correct and label != "nasprune" else None
            r["mcnemar_p_vs_nasprune"] = p
            print(f"{tag:>6}  {label:20}  {acc:6.2%} (+-{r['se']:.2%})  {ms:10.4f}   {ms / orig_t:6.1%}"
                  f"             {'' if p is None else f'{p:.3f}'}")  # fmt: skip
    # (c) every budget from one supernet against one Torch-Pruning run per budget: total wall time
    total = {"nasprune": out["nasprune_supernet_s"] + out["table_s"] + sum(r["search_s"] for r in rows.values())}
    for key in {k for r in rows.values() for k in r if k.startswith("tp_")}:
        total[key] = sum(r[key]["prune_s"] + r[key]["fine_tune_s"] for r in rows.values() if key in r)
    out["total_s"] = total
    print("\ntotal wall time over the budgets: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(total.items())))
    out["load_avg_end"] = list(os.getloadavg())
    save_results("vs_torch_pruning" if args.target == "resnet_mnist" else f"vs_torch_pruning_{args.target}", out)


def as_user_dataset(ds, n: int, root: Path):
    """``ds`` with its train split cut to a stratified ``n`` (val and test whole), added to the dataset store
    under ``root`` as a user dataset with its own split (so the search job loads it by name, as a user's)."""
    import numpy as np
    from supernet_quality import subsample_train

    from nasprune.datasets.store import DatasetStore, datasets_dir

    sub = subsample_train(ds, n)
    mean, std = ds.info.normalization.arrays(ds.input_shape)
    arrays = {}
    for split in ("train", "val", "test"):
        x, y = sub.tensors(split)
        arrays[f"x_{split}"] = (x.numpy() * std + mean).astype(np.float32)  # back to the raw 0-255 scale
        arrays[f"y_{split}"] = y.numpy()
    path = root / f"{ds.name}_{n}.npz"
    root.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays, class_names=np.array(ds.info.class_names))
    name = f"{ds.name}_{n}"
    DatasetStore(datasets_dir(root)).add(name, path, fmt="npz")
    return name, load_dataset(name, data_dir=root)


if __name__ == "__main__":
    main()
