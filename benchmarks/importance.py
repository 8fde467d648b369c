"""Which channel importance to sort a trained model by: weight norm (L1) or activations (data-driven).

    .venv/bin/python benchmarks/importance.py [--epochs 8] [--subnets 40] [--seed 0]

Trains the 1-D CNN (``nasprune.models.cnn1d``) on MNIST-1D as "the user's trained model", then for
each criterion converts a fresh copy, sorts its channels, and scores the same random subnets and the
uniform-width subnets (25/50/75%) one-shot: extracted, BatchNorm recalibrated on the calibration
split, validation accuracy, no fine-tuning. The criterion that keeps more accuracy in the subnets
is the better start for supernet training (the subnets start from the channels it keeps). Prints
the mean accuracy per criterion, the paired difference with its standard error, and writes
benchmarks/results/importance.json.
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

from nasprune.data import load_dataset
from nasprune.elastic.supernet import extract
from nasprune.evaluate import accuracy_of, recalibrate_bn
from nasprune.graph import GraphSupernet
from nasprune.graph.api import derive_space
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--subnets", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
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
