"""Test-only hooks loaded into subprocesses through a ``sitecustomize`` (never by the package).

``pause_site(dir)`` writes a ``sitecustomize.py`` into ``dir``: a Python process started with ``dir``
on its ``PYTHONPATH`` and ``NASPRUNE_TEST_PAUSE_STEP=K`` stops for good when training reaches global
step K (in a sandwich epoch): it first writes its pid to ``NASPRUNE_TEST_PAUSE_MARK`` (a file), so a
test can wait for that file and kill the process at a known point. With ``NASPRUNE_TEST_PAUSE_RANK``
only that Ray Train rank pauses, and only once (the mark stays): the restarted worker runs on.
"""

from __future__ import annotations

from pathlib import Path

_SITE = """
import importlib.abc, os, sys

_step = os.environ.get("NASPRUNE_TEST_PAUSE_STEP")
_ray_only = os.environ.get("NASPRUNE_TEST_PAUSE_RANK") is not None


def _install(train):
    original = train.step_subnets
    mark = os.environ["NASPRUNE_TEST_PAUSE_MARK"]
    rank = os.environ.get("NASPRUNE_TEST_PAUSE_RANK")

    def step_subnets(space, cfg, step):
        if step == int(_step) and not os.path.exists(mark):
            if rank is None or _rank_now() == int(rank):
                with open(mark + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(mark + ".tmp", mark)
                import threading
                threading.Event().wait()  # until killed
        return original(space, cfg, step)

    train.step_subnets = step_subnets


def _rank_now():
    import ray.train
    return ray.train.get_context().get_world_rank()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    # patches nasprune.train_loop (the loop that calls step_subnets) when (and only if) the process imports it
    def find_spec(self, name, path, target=None):
        if name != "nasprune.train_loop":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _install(module)

        spec.loader.exec_module = exec_module
        return spec


if _step and (not _ray_only or any(a.endswith("default_worker.py") for a in sys.argv)):
    sys.meta_path.insert(0, _PatchOnImport())
"""


def pause_site(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITE)
    return folder
