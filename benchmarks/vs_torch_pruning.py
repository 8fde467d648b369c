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
from nasprune.evaluate import Evaluator, accuracy_of
from nasprune.export import export_model
from nasprune.graph import build_model
from nasprune.graph.api import derive_space
from nasprune.graph.models import file_sha256
from nasprune.latency.table import get_table
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
}
SHAPE: tuple[int, ...] = (1, 28, 28)  # the target's input shape, set in main()


def train_plain(model, ds, epochs: int, seed: int = 0, seconds: float | None = None, lr: float = 0.05):
    """SGD (nesterov, cosine) with the supernet recipe's augmentation; for ``seconds`` if given
    (the number of steps is set from the first steps' speed so that the schedule completes)."""
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    per_epoch = len(_batches(ds, cfg, 0))
    steps = epochs * per_epoch
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
    ap.add_argument("--finetune-epochs", type=int, default=5,
                    help="the job's fine-tune of its recommended subnet (its time counts, and Torch-Pruning "
                    "fine-tunes for as long as nasprune took in all)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    global SHAPE
    ref, dataset, SHAPE, builtin, default_epochs = TARGETS[args.target]
    args.epochs = args.epochs or default_epochs
    # the user's model is imported by reference (user_model:dwse_net), here and in any worker process
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)

    tmp = Path(tempfile.mkdtemp(prefix="vs_tp_"))
    ds = load_dataset(dataset)
    xt, yt = ds.tensors("test")
    n_test = len(yt)
    out: dict = {"args": vars(args), "n_test": n_test}

    # 1. the user's trained model
    torch.manual_seed(args.seed)
    original, t_orig, _ = train_plain(build_model(ref, {"num_classes": 10}), ds, args.epochs, args.seed)
    from safetensors.torch import save_file

    weights = tmp / f"{args.target}.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(weights))
    _, orig_ms = onnx_ms(original, tmp, "original")
    out["original"] = {"test_accuracy": accuracy_of(original, xt, yt), "ms": orig_ms, "train_s": t_orig}
    print(f"original: {out['original']['test_accuracy']:.2%} test, {orig_ms:.4f} ms, trained in {t_orig:.0f} s")

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
    root = tmp / "data"
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
                        finetune_epochs=args.finetune_epochs)  # fmt: skip
        ctx = JobContext(f"vs_tp_{tag.rstrip('%')}", journal_url(tmp / f"trials_{tag.rstrip('%')}.journal"),
                         tmp / f"out_{tag.rstrip('%')}", data_dir=root)  # fmt: skip
        result = run_job(job, ctx)
        t_search = time.perf_counter() - t0
        spent = t_supernet + t_search
        rec = result.recommended
        row = {"budget_ms": budget, "nasprune_s": spent, "search_s": t_search}
        if rec is not None:
            acc = rec.test_accuracy
            finals[f"nasprune@{tag}"] = ctx.output_dir / "model.onnx"
            row["nasprune"] = {"test_accuracy": acc, "config": rec.config, "params": rec.params,
                               "verified": rec.verified, "delivered": rec.delivered,
                               "inherited_test_accuracy": rec.inherited_test_accuracy,
                               "finetuned_test_accuracy": rec.finetuned_test_accuracy}  # fmt: skip
            print(f"[{tag}] nasprune: {acc:.2%} test ({rec.delivered or 'inherited'} weights), "
                  f"{rec.params:,} params, {spent:.0f} s")  # fmt: skip
        else:
            row["nasprune"] = None
            print(f"[{tag}] nasprune: no recommended model under {budget:.4f} ms")
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
        # Torch-Pruning, fine-tuned for the same wall-clock
        for imp in ("lamp", "group_magnitude"):
            t0 = time.perf_counter()
            (ratio, model, ms), tries = tp_prune(original, imp, frac, tmp)
            prune_s = time.perf_counter() - t0
            model, ft_s, steps = train_plain(model, ds, epochs=1, seed=args.seed, seconds=spent, lr=0.01)
            acc = accuracy_of(model, xt, yt)
            path, _ = onnx_ms(model, tmp, f"tp_{imp}_{tag.rstrip('%')}")
            finals[f"tp-{imp}@{tag}"] = path
            row[f"tp_{imp}"] = {"test_accuracy": acc, "ratio": ratio, "probe_share": ms, "fine_tune_s": ft_s,
                                "steps": steps, "prune_s": prune_s,
                                "params": sum(p.numel() for p in model.parameters()),
                                "bisection": tries}  # fmt: skip
            print(f"[{tag}] torch-pruning {imp}: {acc:.2%} test, ratio {ratio:.3f}, fine-tuned {ft_s:.0f} s")
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
        for key, label in (("nasprune", "nasprune"), ("uniform", "uniform"), ("tp_lamp", "tp-lamp"),
                           ("tp_group_magnitude", "tp-group_magnitude")):  # fmt: skip
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
    save_results("vs_torch_pruning" if args.target == "resnet_mnist" else f"vs_torch_pruning_{args.target}", out)


if __name__ == "__main__":
    main()
