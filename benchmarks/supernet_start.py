"""How well a supernet trained from the user's weights starts: recipes compared on inherited accuracy.

The search scores subnets on weights they share; on derived spaces those inherited weights were weak
(issue 25: 94.0% / 96.6% before fine-tuning against an original of 98.2%). This trains the user's
model (``--target`` of ``vs_torch_pruning.py``), derives its space, then for each recipe trains a
supernet *from those weights* and scores a fixed set of subnets spread over the space's size
(``GraphSpace.sample_at``) on the validation split, inherited weights with BatchNorm recalibrated,
as the search scores them. The reference for each subnet is what it reaches *alone*: extracted from
the original model (channels in the same importance order) and fine-tuned for ``--ref-steps`` steps
with distillation from the original (``nasprune.finetune``). Reported per recipe: the mean and
largest gap (reference - inherited), Kendall's tau between the two rankings, and the wall time.

    .venv/bin/python benchmarks/supernet_start.py --target fashion_user --train-samples 6000 \\
        --recipes e30:lr0.05 e10:lr0.05 e10:lr0.01 e10:lr0.01:r4

A recipe is ``e<epochs>:lr<lr>[:r<random subnets per step>][:w<largest-only warm-up epochs>][:sizes]``. Writes
benchmarks/results/supernet_start_<target>.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _util import write as save_results
from scipy.stats import kendalltau
from vs_torch_pruning import HERE, TARGETS, as_user_dataset, train_plain

from nasprune.data import load_dataset
from nasprune.evaluate import Evaluator, accuracy_of
from nasprune.finetune import finetune_subnet
from nasprune.graph import build_model
from nasprune.graph.api import derive_space
from nasprune.graph.models import file_sha256
from nasprune.registry import create_supernet, load_space
from nasprune.train import TrainConfig, train_supernet


def parse_recipe(text: str) -> TrainConfig:
    """``e10:lr0.01:r4:w0:sizes`` -> epochs 10, lr 0.01, 4 random subnets per step, no largest-only
    warm-up epochs, subnets drawn around uniformly drawn size levels."""
    fields: dict = {}
    for part in text.split(":"):
        if part == "sizes":
            fields["sampling"] = "sizes"
        elif part.startswith("lr"):
            fields["lr"] = float(part[2:])
        elif part[0] in "erw":
            fields[{"e": "epochs", "r": "n_random", "w": "warmup_epochs"}[part[0]]] = int(part[1:])
        else:
            raise SystemExit(f"unknown recipe part {part!r} in {text!r} (e<epochs>, lr<lr>, r<n>, w<epochs>, sizes)")
    return TrainConfig(**fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=sorted(TARGETS), default="fashion_user")
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=12, help="training epochs of the original model")
    ap.add_argument("--recipes", nargs="+", default=["e30:lr0.05", "e10:lr0.05", "e10:lr0.01", "e10:lr0.01:r4"])
    ap.add_argument("--subnets", type=int, default=8, help="subnets spread over the space's size")
    ap.add_argument("--ref-steps", type=int, default=300, help="fine-tuning steps of each reference subnet")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref, dataset, shape, builtin, _ = TARGETS[args.target]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    tmp = Path(tempfile.mkdtemp(prefix="supernet_start_"))
    root = tmp / "data"
    ds = load_dataset(dataset)
    if args.train_samples:
        dataset, ds = as_user_dataset(ds, args.train_samples, root)
    out: dict = {"args": vars(args), "sizes": ds.sizes(), "load_avg_start": list(os.getloadavg())}

    torch.manual_seed(args.seed)
    original, t_orig, _ = train_plain(build_model(ref, {"num_classes": 10}), ds, args.epochs, args.seed)
    xv, yv = ds.tensors("val")
    out["original"] = {"val_accuracy": accuracy_of(original, xv, yv), "train_s": t_orig}
    print(f"original: {out['original']['val_accuracy']:.2%} val, trained in {t_orig:.0f} s", flush=True)
    from safetensors.torch import save_file

    weights = tmp / "original.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(weights))
    base = load_space(builtin) if builtin else derive_space(
        copy.deepcopy(original), shape, ref, name=args.target, dataset=dataset, model_kwargs={"num_classes": 10})
    space = base.model_copy(update={"name": f"{args.target}_start", "weights": str(weights),
                                    "weights_sha256": file_sha256(weights)})  # fmt: skip
    rng = np.random.default_rng(args.seed)
    levels = np.linspace(0.1, 0.9, args.subnets)
    cfgs = list({c.key(): c for c in (space.sample_at(rng, float(lv)) for lv in levels)}.values())

    # the reference: each subnet alone, from the original's weights, fine-tuned with distillation
    start = create_supernet(space)
    start.reorder_channels()  # the order the supernet training starts from (L1, its default importance)
    refs = []
    t0 = time.perf_counter()
    for cfg in cfgs:
        res = finetune_subnet(start, cfg, ds, steps=args.ref_steps, batch_size=128, max_shift=2, seed=args.seed)
        refs.append(accuracy_of(res.model, xv, yv))
    out["reference"] = {"val_accuracy": refs, "steps": args.ref_steps, "seconds": time.perf_counter() - t0,
                        "macs": [start.macs(c) for c in cfgs]}  # fmt: skip
    print("reference (alone, fine-tuned): " + " ".join(f"{a:.2%}" for a in refs), flush=True)

    out["recipes"] = {}
    for text in args.recipes:
        recipe = parse_recipe(text).model_copy(update={"seed": args.seed})
        t0 = time.perf_counter()
        res = train_supernet(space, recipe, ds, progress=False)
        seconds = time.perf_counter() - t0
        ev = Evaluator(res.supernet.eval(), ds)
        inherited = [ev.accuracy(c, "val") for c in cfgs]
        gaps = [r - i for r, i in zip(refs, inherited, strict=True)]
        tau = float(kendalltau(refs, inherited).statistic)
        steps = recipe.epochs * len(ds.loader("train", recipe.batch_size))
        out["recipes"][text] = {"recipe": recipe.model_dump(), "inherited": inherited, "mean_gap": float(np.mean(gaps)),
                                "max_gap": float(np.max(gaps)), "tau": tau, "seconds": seconds, "steps": steps,
                                "largest": ev.accuracy(space.largest(), "val"),
                                "smallest": ev.accuracy(space.smallest(), "val")}  # fmt: skip
        print(f"{text:16} {steps:5d} steps {seconds:6.0f} s  mean gap {np.mean(gaps) * 100:+.2f} pt  "
              f"max gap {np.max(gaps) * 100:+.2f} pt  tau {tau:.2f}  inherited "
              + " ".join(f"{a:.2%}" for a in inherited), flush=True)  # fmt: skip
        out["load_avg_end"] = list(os.getloadavg())
        save_results(f"supernet_start_{args.target}", out)  # after each recipe: a long study stopped early keeps them


if __name__ == "__main__":
    main()
