"""Throughput and latency of `vimdeploy serve` against concurrency, and of direct in-process calls.

    python benchmarks/bench_serve.py vimdeploy/assets/vim_digits.pth --concurrency 1,2,4,8,16 \\
        --batch 1 --seconds 8 --instances 1,2 --json-out docs/serving_digits.json

For each server configuration (--instances x --max-batch) a `vimdeploy serve` runs on free
127.0.0.1 ports; per concurrency level, that many client threads (one Triton client each)
send requests of --batch images for --seconds (at most --max-requests per level), and every
answer is checked against the direct run of the same artifact (max |diff| <= --atol). Direct:
the engine in this process, called back to back at --batch and at the largest --max-batch.

The soak of docs/reliability.md (16 clients for 60 s; exit status 1 on any failed or wrong answer):

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py vimdeploy/assets/vim_digits.pth --concurrency 16 \
        --batch 1 --seconds 60 --max-requests 1000000 --instances 2 --max-batch 8

The clients run on the same machine as the server and share its cores: on a small machine
they take CPU from it, which is part of what is measured. Nothing leaves the loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vimdeploy.runtime import open_engine  # noqa: E402
from vimdeploy.serving.handler import probe  # noqa: E402
from vimdeploy.serving.process import ServeProcess  # noqa: E402


def machine() -> dict:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average": list(os.getloadavg()),
    }


def percentiles(latencies_s) -> dict:
    ms = np.asarray(latencies_s) * 1000.0
    if not len(ms):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)}


def bench_direct(engine, pool: np.ndarray, batch: int, seconds: float, max_calls: int) -> dict:
    x = pool[:batch]
    engine.run(x)  # warm-up
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and len(latencies) < max_calls:
        t0 = time.perf_counter()
        engine.run(x)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {
        "mode": "direct",
        "batch": batch,
        "calls": len(latencies),
        "images_per_s": round(batch * len(latencies) / wall, 1),
        **percentiles(latencies),
    }


def bench_server(
    server: ServeProcess,
    protocol: str,
    concurrency: int,
    batch: int,
    pool: np.ndarray,
    reference: np.ndarray,
    seconds: float,
    max_requests: int,
    atol: float,
) -> dict:
    if protocol == "http":
        import tritonclient.http as triton
    else:
        import tritonclient.grpc as triton
    latencies, failures, wrong, worst = [], [], 0, 0.0
    lock = threading.Lock()
    budget = threading.Semaphore(max_requests)
    barrier = threading.Barrier(concurrency + 1)

    def client(k):
        nonlocal wrong, worst
        c = triton.InferenceServerClient(server.http if protocol == "http" else server.grpc)
        rng = np.random.default_rng(k)
        barrier.wait()
        while time.perf_counter() < deadline and budget.acquire(blocking=False):
            rows = rng.choice(len(pool), size=batch, replace=False)
            inp = triton.InferInput("images", [batch, *pool.shape[1:]], "FP32")
            inp.set_data_from_numpy(pool[rows])
            t0 = time.perf_counter()
            try:
                result = c.infer("vim", [inp], outputs=[triton.InferRequestedOutput("logits")])
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    failures.append(f"{type(e).__name__}: {e}"[:200])
                continue
            elapsed = time.perf_counter() - t0
            diff = float(np.abs(result.as_numpy("logits") - reference[rows]).max())
            with lock:
                latencies.append(elapsed)
                worst = max(worst, diff)
                wrong += diff > atol

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + seconds  # set before the barrier lets the clients read it
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - start
    return {
        "mode": "server",
        "protocol": protocol,
        "concurrency": concurrency,
        "batch": batch,
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / wall, 1),
        "images_per_s": round(batch * len(latencies) / wall, 1),
        **percentiles(latencies),
        "failed": len(failures),
        "wrong": wrong,
        "max_abs_diff": worst,
        "first_failures": failures[:3],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | server | protocol | concurrency | batch | req/s | images/s "
        "| p50 ms | p90 ms | p99 ms | failed | wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r.get('server', '-')} | {r.get('protocol', '-')} | {r.get('concurrency', 1)} | "
            f"{r['batch']} | {r.get('req_per_s', r.get('images_per_s', 0) / r['batch']):.1f} | "
            f"{r['images_per_s']:.1f} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
            f"{r.get('failed', 0)} | {r.get('wrong', 0)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--batch", type=int, default=1, help="Images per request (and per direct call).")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--instances", default="1", help="Server configurations to run, e.g. 1,2.")
    parser.add_argument("--max-batch", default="8", help="Dynamic batcher limits to run, e.g. 1,8.")
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="Time per measurement.")
    parser.add_argument("--max-requests", type=int, default=5000, help="Requests per measurement, at most.")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    instances = [int(i) for i in args.instances.split(",")]
    max_batches = [int(b) for b in args.max_batch.split(",")]

    before = machine()
    engine = open_engine(args.artifact)
    spec = probe(engine)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((max(64, 2 * args.batch), 3, spec.img_size, spec.img_size)).astype(np.float32)
    reference = engine.run(pool)["logits"]
    rows = []
    for b in sorted({args.batch, *max_batches}):
        rows.append(bench_direct(engine, pool, b, args.seconds, args.max_requests))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    del engine

    for inst in instances:
        for mb in max_batches:
            label = f"{inst} inst, max batch {mb}"
            with tempfile.TemporaryDirectory() as tmp:
                server = ServeProcess(
                    args.artifact,
                    "--instances",
                    inst,
                    "--max-batch",
                    mb,
                    "--max-queue-delay-us",
                    args.max_queue_delay_us,
                    log=Path(tmp) / "serve.log",
                )
                try:
                    for c in concurrency:
                        r = bench_server(
                            server,
                            args.protocol,
                            c,
                            args.batch,
                            pool,
                            reference,
                            args.seconds,
                            args.max_requests,
                            args.atol,
                        )
                        rows.append({**r, "server": label})
                        print(table(rows[-1:]).splitlines()[-1], flush=True)
                finally:
                    code, _ = server.stop(signal.SIGTERM)
    result = {
        "artifact": str(args.artifact),
        "spec": spec.to_dict(),
        "command": " ".join(sys.argv),
        "machine_before": before,
        "load_average_after": list(os.getloadavg()),
        "rows": rows,
    }
    print()
    print(table(rows))
    print(
        f"\nload average before {before['load_average']}, after {result['load_average_after']} "
        f"({before['cores']} cores: {before['cpu']})"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    bad = sum(r.get("failed", 0) + r.get("wrong", 0) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
