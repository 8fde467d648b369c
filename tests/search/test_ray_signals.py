"""A Ray connection made from a worker thread leaves the host's signal handlers in place: SIGTERM
reaches the application's handler while connected and after disconnecting, and every signal's
disposition is as before once the last job has disconnected. In a subprocess with a real local Ray
(the handlers are the process's own)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import ctypes, os, signal, threading
from nasprune import ray_cluster
import ray

libc = ctypes.CDLL(None, use_errno=True)
SIGNALS = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)]

def handlers():
    out = {}
    for s in SIGNALS:
        buf = ctypes.create_string_buffer(512)
        libc.sigaction(int(s), None, buf)
        out[s.name] = buf.raw[: ctypes.sizeof(ctypes.c_void_p)]
    return out

got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append("term"))
before = handlers()
failures = []

def job():
    ray_cluster.connect(ray, None)
    during = handlers()
    failures.extend(f"{n} while connected" for n in ("SIGTERM", "SIGINT", "SIGHUP") if during[n] != before[n])
    ray_cluster.disconnect(ray)

t = threading.Thread(target=job)
t.start()
t.join()
after = handlers()
failures += [n for n in before if after[n] != before[n]]
assert not failures, f"changed: {failures}"
os.kill(os.getpid(), signal.SIGTERM)  # the application's handler runs; the process lives on
assert got == ["term"], got
print("handlers intact")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal dispositions")
def test_ray_from_a_worker_thread_leaves_signal_handlers_alone():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "handlers intact" in out.stdout, (out.returncode, out.stderr[-3000:])
