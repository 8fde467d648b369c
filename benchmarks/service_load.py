"""Load on the real service: 50 clients polling job status for 20 s, and 20 concurrent submissions.

Starts the API (uvicorn, job store on SQLite, worker pool) in a subprocess on loopback, then from
this process runs ``--clients`` asyncio clients, each polling ``GET /v1/jobs/{id}`` every
``--interval`` seconds for ``--seconds``; after ``--submit-after`` seconds, ``--submissions``
``POST /v1/jobs`` fire at once while the polling goes on. Prints p50/p99 latency and error counts
and checks that every submitted job is listed. Goal: status p99 <= 20 ms, 0 errors, all jobs present.

By default jobs run a light stand-in for the search (20 "trials" of 10 ms, with progress writes),
so the server is loaded by what the service itself does; ``--real-runner`` uses the real search.

    .venv/bin/python benchmarks/service_load.py            # writes benchmarks/results/service_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Status polls use a minimal HTTP/1.1 client (see RawConnection); submissions and checks use httpx.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def light_runner(job, ctx):
    """20 pretend trials of 10 ms each, reporting progress like the search does; no model, no search."""
    from nasprune.search.job import Progress, SearchResult

    n = min(job.n_trials, 20)
    for i in range(n):
        if ctx.should_stop():
            break
        time.sleep(0.01)
        ctx.on_progress(Progress(stage="searching", n_done=i + 1, n_total=job.n_trials, best_accuracy=0.5 + i / 100))
    return SearchResult(job=job, n_trials=n, pareto=[], recommended=None)


def serve(port: int, data_dir: str, workers: int, real: bool) -> None:
    """The server side (run in a subprocess by ``main``)."""
    from nasprune.service.api.app import create_app
    from nasprune.service.api.server import make_server
    from nasprune.settings import Settings

    settings = Settings(data_dir=data_dir, workers=workers, port=port)
    app = create_app(settings, None if real else light_runner)
    make_server(app, "127.0.0.1", port, access_log=False, log_level="warning").run()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summary(latencies_ms: list[float], errors: int) -> dict:
    return {
        "requests": len(latencies_ms) + errors,
        "errors": errors,
        "p50_ms": round(pct(latencies_ms, 50), 3),
        "p90_ms": round(pct(latencies_ms, 90), 3),
        "p99_ms": round(pct(latencies_ms, 99), 3),
        "max_ms": round(max(latencies_ms), 3) if latencies_ms else None,
        "mean_ms": round(statistics.fmean(latencies_ms), 3) if latencies_ms else None,
    }


class RawConnection:
    """A minimal keep-alive HTTP/1.1 GET client over asyncio streams.

    The pollers use it instead of httpx so the load generator (sharing this machine's two cores
    with the server) spends little CPU per request and the latency measured is the server's.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(base: str, args) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + args.submissions + 10)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        seed_ids = []
        for i in range(5):
            r = await http.post("/v1/jobs", json={"space": "mlp_digits", "latency_budget_ms": 1.0, "seed": i})
            r.raise_for_status()
            seed_ids.append(r.json()["id"])

        poll_lat: list[float] = []
        poll_err: list[str] = []
        stop_at = time.perf_counter() + args.seconds

        async def poller(k: int) -> None:
            job_id = seed_ids[k % len(seed_ids)]
            conn = RawConnection(http.base_url.host, http.base_url.port)
            await asyncio.sleep(args.interval * k / args.clients)  # spread the clients over one interval
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    status, body = await conn.get(f"/v1/jobs/{job_id}")
                    dt = (time.perf_counter() - t0) * 1000
                    if status == 200 and body.startswith(b'{"id":'):
                        poll_lat.append(dt)
                    else:
                        poll_err.append(f"HTTP {status}")
                except (OSError, ValueError, asyncio.IncompleteReadError) as e:
                    poll_err.append(type(e).__name__)
                    conn.close()
                    conn = RawConnection(http.base_url.host, http.base_url.port)
                if args.interval:
                    await asyncio.sleep(args.interval)
            conn.close()

        sub_lat: list[float] = []
        sub_err: list[str] = []
        submitted: list[str] = []

        async def submit(i: int) -> None:
            body = {"space": "mlp_digits", "latency_budget_ms": 1.0, "n_trials": 20, "seed": 100 + i}
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/jobs", json=body)
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code == 202:
                    sub_lat.append(dt)
                    submitted.append(r.json()["id"])
                else:
                    sub_err.append(f"HTTP {r.status_code}: {r.text[:100]}")
            except httpx.HTTPError as e:
                sub_err.append(type(e).__name__)

        async def submissions() -> None:
            await asyncio.sleep(args.submit_after)
            await asyncio.gather(*(submit(i) for i in range(args.submissions)))

        t_start = time.perf_counter()
        await asyncio.gather(*(poller(k) for k in range(args.clients)), submissions())
        elapsed = time.perf_counter() - t_start

        listed: set[str] = set()
        offset = 0
        while True:
            page = (await http.get("/v1/jobs", params={"limit": 500, "offset": offset})).json()
            listed |= {j["id"] for j in page["items"]}
            if not page["next"]:
                break
            offset += 500
        missing = [j for j in submitted if j not in listed]
        deadline = time.perf_counter() + 60
        finished = 0
        while time.perf_counter() < deadline:
            page = (await http.get("/v1/jobs", params={"status": "succeeded", "limit": 500})).json()
            finished = page["total"]
            if finished >= len(seed_ids) + len(submitted):
                break
            await asyncio.sleep(0.5)

    return {
        "status_polls": {**summary(poll_lat, len(poll_err)), "rate_per_s": round(len(poll_lat) / elapsed, 1)},
        "submissions": summary(sub_lat, len(sub_err)),
        "submitted": len(submitted),
        "listed_missing": len(missing),
        "jobs_succeeded": finished,
        "jobs_total": len(seed_ids) + len(submitted),
        "error_samples": (poll_err + sub_err)[:5],
        "elapsed_s": round(elapsed, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--interval", type=float, default=0.1, help="pause between one client's polls (s); 0 = flat out")
    p.add_argument("--submissions", type=int, default=20)
    p.add_argument("--submit-after", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2, help="server worker threads (jobs at once)")
    p.add_argument("--real-runner", action="store_true", help="run the real search instead of the light stand-in")
    p.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print only, do not write the JSON result")
    args = p.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.workers, args.real_runner)
        return 0

    import httpx

    from nasprune.mlflow_server import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nasprune-load-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NASPRUNE_")}
        cmd = [sys.executable, __file__, "--serve", str(port), tmp, "--workers", str(args.workers)]
        if args.real_runner:
            cmd.append("--real-runner")
        server = subprocess.Popen(cmd, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            load_before = os.getloadavg()
            cpu_before = time.process_time()
            result = asyncio.run(load(base, args))
            result["machine_load"] = {
                "loadavg_1min_before": round(load_before[0], 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
                "load_generator_cpu_s": round(time.process_time() - cpu_before, 2),
                "cores": os.cpu_count(),
            }
        finally:
            server.terminate()
            server.wait(30)

    runner = "real search (nasprune.search.runner.run_job)" if args.real_runner else "light stand-in (no search)"
    s, sub = result["status_polls"], result["submissions"]
    print(
        f"service load: {args.clients} clients polling every {args.interval:g} s for {args.seconds:g} s, "
        f"{args.submissions} concurrent submissions; {args.workers} workers; job runner: {runner}"
    )
    print(
        f"  GET /v1/jobs/{{id}}: {s['requests']} requests ({s['rate_per_s']}/s), p50 {s['p50_ms']} ms, "
        f"p90 {s['p90_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms, errors {s['errors']}"
    )
    print(
        f"  POST /v1/jobs:     {sub['requests']} requests, p50 {sub['p50_ms']} ms, p99 {sub['p99_ms']} ms, "
        f"errors {sub['errors']}"
    )
    print(
        f"  jobs: {result['submitted']} submitted, {result['listed_missing']} missing from the list, "
        f"{result['jobs_succeeded']}/{result['jobs_total']} succeeded"
    )
    m = result["machine_load"]
    print(
        f"  machine: {m['cores']} cores, 1-min load average {m['loadavg_1min_before']} before, "
        f"{m['loadavg_1min_after']} after (other processes on the machine inflate the tail)"
    )
    ok = s["p99_ms"] <= 20 and s["errors"] == 0 and sub["errors"] == 0 and result["listed_missing"] == 0
    print(f"  goal (status p99 <= 20 ms, 0 errors, all jobs present): {'met' if ok else 'NOT met'}")
    if not args.no_write:
        from _util import write

        write(
            "service_load",
            {
                "config": {k: v for k, v in vars(args).items() if k not in ("serve", "no_write")},
                "runner": runner,
                "goal_met": ok,
                **result,
            },
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
