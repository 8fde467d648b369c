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
import os, sys

_step = os.environ.get("NASPRUNE_TEST_PAUSE_STEP")
_ray_only = os.environ.get("NASPRUNE_TEST_PAUSE_RANK") is not None
if _step and (not _ray_only or any(a.endswith("default_worker.py") for a in sys.argv)):
    import nasprune.train as _train

    _original = _train.step_subnets
    _mark = os.environ["NASPRUNE_TEST_PAUSE_MARK"]
    _rank = os.environ.get("NASPRUNE_TEST_PAUSE_RANK")

    def step_subnets(space, cfg, step):
        if step == int(_step) and not os.path.exists(_mark):
            if _rank is None or _rank_now() == int(_rank):
                tmp = _mark + ".tmp"
                with open(tmp, "w") as f:
                    f.write(str(os.getpid()))
                os.replace(tmp, _mark)
                import threading
                threading.Event().wait()  # until killed
        return _original(space, cfg, step)

    def _rank_now():
        import ray.train
        return ray.train.get_context().get_world_rank()

    _train.step_subnets = step_subnets
"""


def pause_site(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITE)
    return folder
