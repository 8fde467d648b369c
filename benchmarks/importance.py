"""Which channel importance to sort a trained model by: weight norm (L1) or activations (data-driven).

    .venv/bin/python benchmarks/importance.py [--epochs 8] [--subnets 40] [--seed 0]

Trains the 1-D CNN (``nasprune.models.cnn1d``) on MNIST-1D as "the user's trained model", then for
each criterion converts a fresh copy, sorts its channels, and scores the same random subnets and the
uniform-width subnets (25/50/75%) one-shot: extracted, BatchNorm recalibrated on the calibration
split, validation accuracy, no fine-tuning. The criterion that keeps more accuracy in the subnets
is the better start for supernet training (the subnets start from the channels it keeps). Prints
the mean accuracy per criterion, the paired difference with its standard error, and writes
benchmarks/results/importance.json.

``--after-training`` compares them where it counts, after supernet training: the trained model's
weights (a safetensors file, as a user brings them) start one supernet of the ``cnn1d_mnist1d``
space per criterion and seed (``TrainConfig.importance``; default recipe, sandwich rule, the
original model as teacher), on ``--train-samples`` training sequences; every supernet then scores
the same subnets (the 8 that ``supernet_quality.py`` spreads over the space, plus ``--subnets``
random ones) on ``--fresh-samples`` newly generated sequences. With ``--standalone FILE`` (a
``supernet_quality.py`` JSON of the same split) it also gives Kendall's tau of each supernet's
inherited accuracy against standalone training over those 8. Writes importance_after_training.json.

    .venv/bin/python benchmarks/importance.py --after-training --seeds 2 \
        --standalone benchmarks/results/supernet_quality_cnn1d_mnist1d_fresh_s0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from nasprune.data import load_dataset
from nasprune.evaluate import accuracy_of, recalibrate_bn
from nasprune.graph import GraphSupernet
from nasprune.graph.api import derive_space
from nasprune.graph.supernet import extract
from nasprune.models.cnn1d import cnn1d


def train(model, ds, epochs: int, seed: int):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * len(ds.loader("train", 128)))
    model.train()
    for epoch in range(epochs):
        for x, y in ds.loader("train", 128, shuffle=True, seed=seed * 100 + epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def score(net, space, cfgs, ds) -> list[float]:
    xc, _ = ds.tensors("calib")
    xv, yv = ds.tensors("val")
    out = []
    for cfg in cfgs:
        sub = extract(net, cfg)
        recalibrate_bn(sub, [xc])
        out.append(accuracy_of(sub, xv, yv))
    return out


def after_training(args) -> None:
    """Train one supernet per criterion and seed from the same trained weights; score the same subnets."""
    import tempfile

    from safetensors.torch import save_file
    from scipy.stats import kendalltau
    from supernet_quality import add_fresh, spread, subsample_train

    from nasprune.evaluate import Evaluator
    from nasprune.registry import load_space
    from nasprune.train import default_recipe, train_supernet

    t0 = time.perf_counter()
    space = load_space("cnn1d_mnist1d")
    ds = subsample_train(add_fresh(load_dataset(space.dataset), args.fresh_samples), args.train_samples)
    split = "fresh" if args.fresh_samples else "test"
    trained = train(cnn1d(num_classes=10), ds, args.epochs, 0)
    base_acc = accuracy_of(trained, *ds.tensors(split))
    print(f"the user's model: {base_acc:.2%} on {split} ({args.epochs} epochs, {ds.sizes()['train']} sequences)")
    rng = np.random.default_rng(args.seed)
    cfgs = spread(space, 8) + [space.sample(rng) for _ in range(args.subnets)]
    standalone = None
    if args.standalone:
        pairs = json.loads(args.standalone.read_text())["spaces"]["cnn1d_mnist1d"]["pairs"]
        standalone = {p["key"]: p["standalone_by_split"][split] for p in pairs}
        if [c.key() for c in cfgs[:8]] != list(standalone):
            raise SystemExit(f"{args.standalone}: its subnets are not the 8 spread here (another space version?)")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "trained.safetensors"
        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
        for seed in range(args.seed, args.seed + args.seeds):
            for criterion in ("l1", "activation"):
                recipe = default_recipe(space).model_copy(update={"importance": criterion, "seed": seed})
                res = train_supernet(space, recipe, dataset=ds, weights=weights, progress=False)
                ev = Evaluator(res.supernet, ds)
                accs = [ev.accuracy(c, split) for c in cfgs]
                run = {"criterion": criterion, "seed": seed, "train_seconds": res.seconds, "accuracy": accs}
                if standalone:
                    run["kendall_tau"] = float(kendalltau(accs[:8], [standalone[c.key()] for c in cfgs[:8]]).statistic)
                runs.append(run)
                tau = f", tau vs standalone {run['kendall_tau']:.3f}" if standalone else ""
                print(f"seed {seed} {criterion:10}: mean {np.mean(accs):.2%} over {len(accs)} subnets{tau} "
                      f"({res.seconds:.0f} s)", flush=True)  # fmt: skip
    diffs = []
    for seed in range(args.seed, args.seed + args.seeds):
        a, b = (np.array(next(r["accuracy"] for r in runs if r["seed"] == seed and r["criterion"] == c))
                for c in ("activation", "l1"))  # fmt: skip
        diffs.append(a - b)
    d = np.concatenate(diffs)
    summary = {
        "mean": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(len(d))),
        "activation_wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "n": len(d),
    }
    out = {
        "command": "benchmarks/importance.py " + " ".join(sys.argv[1:]),
        "split": split,
        "split_sizes": ds.sizes(),
        "user_model_accuracy": base_acc,
        "subnets": [c.key() for c in cfgs],
        "runs": runs,
        "activation_minus_l1": summary,
        "seconds": time.perf_counter() - t0,
    }
    print(f"activation - l1 per subnet and seed: {summary['mean'] * 100:+.2f} pt +- {summary['se'] * 100:.2f} (SE); "
          f"activation better on {summary['activation_wins']}/{summary['n']} ({summary['ties']} ties)")  # fmt: skip
    if standalone:
        for c in ("l1", "activation"):
            taus = [r["kendall_tau"] for r in runs if r["criterion"] == c]
            print(f"{c:10} tau vs standalone: " + ", ".join(f"{t:.3f}" for t in taus))
    print(f"{out['seconds']:.0f} s")
    path = Path(__file__).resolve().parent / "results" / "importance_after_training.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"written {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the user's model (default %(default)s)")
    ap.add_argument("--subnets", type=int, default=40, help="random subnets scored (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--after-training", action="store_true", help="compare after supernet training (see above)")
    ap.add_argument("--seeds", type=int, default=2, help="--after-training: supernet seeds per criterion")
    ap.add_argument("--train-samples", type=int, default=4000, help="--after-training: training sequences")
    ap.add_argument("--fresh-samples", type=int, default=20000, help="--after-training: scoring sequences")
    ap.add_argument("--standalone", type=Path, help="--after-training: supernet_quality.py JSON with standalone runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.after_training:
        return after_training(args)
    t0 = time.perf_counter()
    ds = load_dataset("mnist1d")
    trained = train(cnn1d(num_classes=10), ds, args.epochs, args.seed)
    base_acc = accuracy_of(trained, *ds.tensors("val"))
    results: dict = {"trained_val_acc": base_acc, "criteria": {}}
    cfgs = None
    for criterion in ("l1", "activation"):
        model = copy.deepcopy(trained)
        space = derive_space(model, ds.input_shape, model_ref="nasprune.models.cnn1d:cnn1d",
                             model_kwargs={"num_classes": 10}, dataset="mnist1d")  # fmt: skip
        net = GraphSupernet(space, model)
        if cfgs is None:
            rng = np.random.default_rng(args.seed)
            cfgs = [space.uniform(f) for f in (0.25, 0.5, 0.75)] + [space.sample(rng) for _ in range(args.subnets)]
        scores = None
        if criterion == "activation":
            scores = net.activation_importance([ds.tensors("calib")[0]])
        net.reorder_channels(scores)
        accs = score(net, space, cfgs, ds)
        results["criteria"][criterion] = {"uniform_25_50_75": accs[:3], "random": accs[3:]}
    a = np.array(results["criteria"]["activation"]["random"])
    b = np.array(results["criteria"]["l1"]["random"])
    d = a - b
    results["activation_minus_l1"] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                                      "activation_wins": int((d > 0).sum()), "n": len(d)}  # fmt: skip
    results["seconds"] = time.perf_counter() - t0
    print(f"trained model: {base_acc:.2%} validation accuracy ({args.epochs} epochs)")
    for c, r in results["criteria"].items():
        u = ", ".join(f"{x:.1%}" for x in r["uniform_25_50_75"])
        print(f"{c:10} random subnets mean {np.mean(r['random']):.2%} (n={len(r['random'])}); uniform 25/50/75%: {u}")
    m = results["activation_minus_l1"]
    print(f"activation - l1 per subnet: {m['mean'] * 100:+.2f} pt +- {m['se'] * 100:.2f} (SE); "
          f"activation better on {m['activation_wins']}/{m['n']}")  # fmt: skip
    print(f"{results['seconds']:.0f} s")
    out = Path(__file__).resolve().parent / "results" / "importance.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
