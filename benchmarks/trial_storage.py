"""Per-trial overhead of Optuna storages with nasprune's trial pattern (ask, 13 categorical
parameters, a constraint, 3 user attributes, tell; NSGA-II sampler), no objective work.

    .venv/bin/python benchmarks/trial_storage.py [--trials 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import write

from nasprune.search.study import journal_url, make_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def per_trial_ms(url: str, n: int) -> float:
    study = optuna.create_study(
        storage=make_storage(url), directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=0)
    )
    t0 = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        for k in range(13):
            trial.suggest_categorical(f"width.{k}", [8, 16, 24, 32])
        trial.set_constraint("latency_ms", -0.1)
        trial.set_user_attr("subnet_key", "0123456789abcdef")
        trial.set_user_attr("config", {"depths": {"stage0": 1}, "widths": {"stem": 8}})
        trial.set_user_attr("metrics", {"accuracy": 0.9, "latency_ms": 0.1})
        study.tell(trial, [0.9, 0.1])
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # in one run, so the ratio holds even on a noisy machine
        res = {
            "journal file": per_trial_ms(journal_url(Path(tmp) / "t.journal"), args.trials),
            "sqlite (WAL)": per_trial_ms(f"sqlite:///{tmp}/t.db", args.trials),
        }
    for name, ms in res.items():
        print(f"{name:14s} {ms:7.1f} ms/trial")
    print(f"sqlite / journal: x{res['sqlite (WAL)'] / res['journal file']:.1f}")
    write(
        "trial_storage",
        {
            "command": "benchmarks/trial_storage.py " + " ".join(sys.argv[1:]),
            "trials": args.trials,
            "ms_per_trial": res,
        },
    )


if __name__ == "__main__":
    main()
