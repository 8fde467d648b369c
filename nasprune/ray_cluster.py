"""This process's connection to Ray, shared by the jobs that use it (Ray Tune trials, Ray Train workers).

:func:`connect` joins the cluster at an address (or starts a local Ray) once per process; the last
:func:`disconnect` shuts it down, and only a Ray this process started. The host's handlers of
shutdown signals are kept in place (Ray's core worker would take SIGTERM from ``nasprune serve``).
Callers pass the imported ``ray`` module: Ray is an optional dependency, imported where it is used.
"""

from __future__ import annotations

import os
import threading

__all__ = ["connect", "disconnect"]

_RAY_LOCK = threading.Lock()
_RAY_USERS: dict = {"jobs": 0, "ours": False, "signals": None}

# Ray reads these from the environment only (ray.init has no parameter for them), in this process
# and in the Ray processes a local ``ray.init`` starts; set once, and only where the caller has not.
_RAY_ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# Signals whose handlers the host application owns: Ray's core worker puts abseil's failure
# handler on SIGTERM (and SIGSEGV, SIGBUS, ...) and ``ray.shutdown`` leaves SIGTERM at the default,
# so a SIGTERM would kill ``nasprune serve`` at once instead of shutting it down. Jobs run in worker
# threads, where ``signal.signal`` cannot be called, so the C-level dispositions are read and put
# back with ``sigaction`` (libc; a no-op where there is none, e.g. Windows).
_HOST_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_SIGACTION_SIZE = 512  # larger than ``struct sigaction`` on any libc; kept as opaque bytes


class _Sigactions:
    """The dispositions of every catchable signal at one moment (``struct sigaction`` as bytes)."""

    def __init__(self, libc, actions: dict[int, bytes]):
        self._libc = libc
        self.actions = actions

    @classmethod
    def now(cls) -> _Sigactions | None:
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.sigaction  # noqa: B018  (AttributeError without it)
        except (OSError, AttributeError):
            return None
        actions = {}
        for sig in signal.Signals:
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                buf = ctypes.create_string_buffer(_SIGACTION_SIZE)
                if libc.sigaction(int(sig), None, buf) == 0:
                    actions[int(sig)] = buf.raw
        return cls(libc, actions)

    def handler(self, sig: int) -> bytes:
        """The handler field (the first member of ``struct sigaction`` on Linux and macOS)."""
        import ctypes

        return self.actions[sig][: ctypes.sizeof(ctypes.c_void_p)]

    def put(self, sig: int) -> None:
        import ctypes

        self._libc.sigaction(sig, ctypes.create_string_buffer(self.actions[sig], _SIGACTION_SIZE), None)


def _after_init(before: _Sigactions | None) -> _Sigactions | None:
    """Put the host's handlers of shutdown signals back; returns what ``ray.init`` had installed."""
    if before is None:
        return None
    import signal

    installed = _Sigactions.now()
    for sig in before.actions:
        if signal.Signals(sig).name in _HOST_SIGNALS and installed.handler(sig) != before.handler(sig):
            before.put(sig)
    return installed


def _after_shutdown(before: _Sigactions, installed: _Sigactions, pre: _Sigactions) -> None:
    """Leave every signal as it was before ``ray.init``, except where the host changed it since.

    ``pre`` is what was in place just before ``ray.shutdown``: a handler of Ray's own (as
    ``ray.init`` installed it) goes back to the one from before ``ray.init``, any other handler
    (the host's) is kept, whatever ``ray.shutdown`` did to it.
    """
    post = _Sigactions.now()
    for sig in before.actions:
        rays = pre.handler(sig) == installed.handler(sig) != before.handler(sig)
        want = before if rays else pre
        if post.handler(sig) != want.handler(sig):
            want.put(sig)


def connect(ray, address: str | None) -> None:
    """Join the cluster at ``address`` (or start a local Ray) once per process; jobs share the connection.

    The host's handlers of shutdown signals stay in place while connected, and every signal is as
    before once the last job disconnects (see :func:`_after_shutdown`).
    """
    with _RAY_LOCK:
        if not ray.is_initialized():
            for key, value in _RAY_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
            before = _Sigactions.now()
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            _RAY_USERS["ours"] = True
            _RAY_USERS["signals"] = (before, _after_init(before))
        _RAY_USERS["jobs"] += 1


def disconnect(ray) -> None:
    """The last job of this process to finish disconnects (only from a Ray it connected itself)."""
    with _RAY_LOCK:
        _RAY_USERS["jobs"] -= 1
        if _RAY_USERS["jobs"] == 0 and _RAY_USERS["ours"]:
            before, installed = _RAY_USERS["signals"] or (None, None)
            pre = _Sigactions.now() if before is not None else None
            ray.shutdown()
            if before is not None and installed is not None and pre is not None:
                _after_shutdown(before, installed, pre)
            _RAY_USERS["ours"] = False
            _RAY_USERS["signals"] = None
