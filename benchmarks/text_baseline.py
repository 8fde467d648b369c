"""The "user's model" of the transformer benchmarks (issue 31 point 4): all-MiniLM-L6-v2 fine-tuned on the
built-in ``rotten_tomatoes`` (train split, split by film), beside a bag-of-words baseline (TF-IDF unigrams and
bigrams, logistic regression with C chosen on val). Test accuracy ± binomial SE for both, wall time, steps,
the machine's load average; writes ``benchmarks/results/text_baseline.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_baseline.py [--steps 250] [--max-minutes 13] \
        [--save minilm_rotten_tomatoes.safetensors]

Torch runs at 1 thread. Each batch is cut to its longest snippet (at most 64 tokens): the cut positions are
padding the attention mask hides, so the logits are those of the full 64 (checked on a test batch). Training
stops at ``--steps`` or when ``--max-minutes`` have passed, whichever is first; the steps done are reported.
Nothing is downloaded (``HF_HUB_OFFLINE=1``, local files only).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from _util import write

from nasprune.data import load_dataset
from nasprune.datasets import text
from nasprune.graph.models import build_model


def acc_se(correct: int, n: int) -> dict:
    p = correct / n
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / n), "n": n}


def trim(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of a batch, cut to the longest sample's tokens."""
    ids, mask = text.unpack(x)
    keep = int(mask.sum(1).max())
    return ids[:, :keep], mask[:, :keep]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch: int = 128) -> int:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(*trim(x[i : i + batch])).argmax(1) == y[i : i + batch]).sum())
    return correct


def bag_of_words(seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    texts, labels, movies = text.read_rotten_tomatoes(text.rotten_tomatoes_file())
    idx = text.split_by_group(text.film_groups(texts, movies), labels, seed)
    docs = np.array(texts, dtype=object)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform(docs[idx["train"]])
    x_val, x_test = vec.transform(docs[idx["val"]]), vec.transform(docs[idx["test"]])
    best = None
    for c in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, labels[idx["train"]])
        val = float((clf.predict(x_val) == labels[idx["val"]]).mean())
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    correct = int((clf.predict(x_test) == labels[idx["test"]]).sum())
    out = {"model": "TF-IDF (1-2 grams, min_df 2) + logistic regression", "C": c, "val_accuracy": val,
           "features": x_train.shape[1], "wall_s": time.perf_counter() - t0}  # fmt: skip
    return {**out, "test": acc_se(correct, len(idx["test"]))}


def fine_tune(ds, args) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(args.seed)
    model = build_model("hf:minilm-l6", {"num_classes": 2})
    x, y = ds.tensors("train")
    x_test, y_test = ds.tensors("test")
    with torch.no_grad():  # the per-batch cut changes nothing: check it on one test batch
        model.eval()
        full = model(*text.unpack(x_test[:16]))
        cut = model(*trim(x_test[:16]))
        cut_err = float((full - cut).abs().max())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / (args.steps - warmup)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(y), generator=gen)
    t0, step, pos, seen, losses = time.perf_counter(), 0, 0, 0, []
    model.train()
    while step < args.steps and time.perf_counter() - t0 < args.max_minutes * 60:
        if pos + args.batch > len(y):
            order, pos = torch.randperm(len(y), generator=gen), 0
        b = order[pos : pos + args.batch]
        pos += args.batch
        loss = torch.nn.functional.cross_entropy(model(*trim(x[b])), y[b])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        seen += len(b)
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == 1:
            el = time.perf_counter() - t0
            print(f"step {step}/{args.steps}  loss {np.mean(losses[-10:]):.3f}  {el:.0f} s  "
                  f"({el / step:.2f} s/step, load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    correct = evaluate(model, x_test, y_test)
    eval_s = time.perf_counter() - t1
    out = {
        "model": "all-MiniLM-L6-v2 (hf:minilm-l6) + a new 2-label head, all weights fine-tuned",
        "steps": step,
        "steps_asked": args.steps,
        "batch": args.batch,
        "max_length": 64,
        "epochs": seen / len(y),
        "lr": args.lr,
        "schedule": f"AdamW, weight decay 0.01, linear warm-up {warmup} steps then linear decay to step {args.steps}",
        "final_loss_mean_last_20": float(np.mean(losses[-20:])),
        "train_s": train_s,
        "test_eval_s": eval_s,
        "batch_cut_max_logit_diff": cut_err,
    }
    return {**out, "test": acc_se(correct, len(y_test))}, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-minutes", type=float, default=13.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="write the fine-tuned weights (safetensors) here")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    ds = load_dataset("rotten_tomatoes", seed=args.seed)
    print(f"rotten_tomatoes: {ds.info.sizes} (split by film, seed {args.seed})", flush=True)
    bow = bag_of_words(args.seed)
    print(f"bag of words: test {bow['test']['accuracy']:.2%} ± {bow['test']['se']:.2%} (C={bow['C']})", flush=True)
    tuned, model = fine_tune(ds, args)
    print(f"MiniLM-L6: test {tuned['test']['accuracy']:.2%} ± {tuned['test']['se']:.2%} after {tuned['steps']} "
          f"steps ({tuned['train_s']:.0f} s)", flush=True)  # fmt: skip
    if args.save is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.save))
        print(f"wrote {args.save}")
    write("text_baseline", {
        "command": " ".join(["OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_baseline.py", *sys.argv[1:]]),
        "threads": torch.get_num_threads(),
        "dataset": {"name": "rotten_tomatoes", "sizes": ds.info.sizes, "class_names": ds.info.class_names,
                    "content_hash": ds.info.short_hash},
        "minilm": tuned,
        "bag_of_words": bow,
        "wall_s": time.perf_counter() - t0,
        "load_average": {"start": list(load0), "end": list(os.getloadavg())},
    })  # fmt: skip


if __name__ == "__main__":
    main()
