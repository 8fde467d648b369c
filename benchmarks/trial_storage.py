"""Per-trial overhead of Optuna storages with nasprune's trial pattern (ask, 16 categorical
parameters, a constraint, 3 user attributes, tell; NSGA-II sampler), no objective work.

Two ways to drive a durable storage: "direct" asks and tells on it (one write per parameter and
attribute), "mirror" is what the Optuna backend does (``nasprune/search/optuna_backend.py``): ask
and tell on an in-memory study, then one ``add_trial`` write of the finished trial.

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


def _trial(trial) -> None:
    for k in range(16):
        trial.suggest_categorical(f"width.{k}", [8, 16, 24, 32])
    trial.set_constraint("latency_ms", -0.1)
    trial.set_user_attr("subnet_key", "0123456789abcdef")
    trial.set_user_attr("config", {"depths": {"blocks.0-2": 1}, "widths": {"stem.0": 16}})
    trial.set_user_attr("metrics", {"accuracy": 0.9, "latency_ms": 0.1})


def per_trial_ms(url: str, n: int, mirror: bool) -> float:
    def study(storage=None):
        return optuna.create_study(
            storage=storage, directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=0)
        )

    durable = study(make_storage(url))
    driven = study() if mirror else durable
    t0 = time.perf_counter()
    for _ in range(n):
        trial = driven.ask()
        _trial(trial)
        finished = driven.tell(trial, [0.9, 0.1])
        if mirror:
            durable.add_trial(finished)
    assert len(durable.get_trials(deepcopy=False)) == n
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # in one run, so the ratio holds even on a noisy machine
        urls = {
            "journal file": lambda how: journal_url(Path(tmp) / f"{how}.journal"),
            "sqlite (WAL)": lambda how: f"sqlite:///{tmp}/{how}.db",
        }
        res = {
            f"{name}, {how}": per_trial_ms(url(how), args.trials, mirror=how == "mirror")
            for name, url in urls.items()
            for how in ("direct", "mirror")
        }
    for name, ms in res.items():
        print(f"{name:22s} {ms:7.1f} ms/trial")
    for name in ("journal file", "sqlite (WAL)"):
        print(f"{name}: direct / mirror x{res[f'{name}, direct'] / res[f'{name}, mirror']:.1f}")
    print(f"sqlite / journal (mirror): x{res['sqlite (WAL), mirror'] / res['journal file, mirror']:.1f}")
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
