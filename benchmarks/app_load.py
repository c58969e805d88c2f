"""Load benchmark of the web app: N concurrent ``gradio_client`` users, M requests each, on one endpoint.

::

    python benchmarks/app_load.py                                  # 8 users x 10 requests, /fundus_classify
    python benchmarks/app_load.py --users 4 --requests 5 --endpoint /xray_segment --json
    python benchmarks/app_load.py --url http://127.0.0.1:7860/     # an app that is already running

Without ``--url`` it starts ``unimae app`` (demo models, built first if missing) in a subprocess on a free
port and reports that server's peak resident memory (``VmHWM``). The figures belong to the model that served
them: the output names it (model key, class, encoder depth x width, patch, input size, parameters; the demo
models are small, e.g. the ``micro`` preset with 2 blocks). Each user is a thread with its own
client; every request uploads the example file and waits for the result. Reported: latency p50 / p95 /
mean / max, throughput, failures and the server's peak RSS. ``--json`` prints one JSON object with
``p50_s``, ``p95_s``, ``failures``, ``requests`` and ``peak_rss_mb`` among others.

Target on 2 CPU cores: 8 users x 10 requests, 0 failures, p95 under 5 s for fundus classification.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app at {url} was not ready within {timeout:.0f} s")


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size of a process (Linux ``VmHWM``), in MiB; None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty list."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def describe_model(checkpoint: Path, key: str) -> dict:
    """What served the requests: from the checkpoint's JSON and the tensor shapes in its safetensors header."""
    import struct

    from unimae.core.checkpoint_io import model_arguments

    meta = json.loads(checkpoint.read_text())
    cfg, contract = model_arguments(meta), meta.get("contract") or {}
    with open(checkpoint.with_suffix(".safetensors"), "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    params = sum(eval_shape(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return {"key": key, "model_class": meta.get("model_class"), "depth": cfg.get("depth"), "width": cfg.get("embed_dim"),
            "heads": cfg.get("num_heads"), "patch_size": cfg.get("patch_size"), "input_size": contract.get("input_size"),
            "params_m": round(params / 1e6, 3)}  # fmt: skip


def eval_shape(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def caption(m: dict | None) -> str:
    if not m:
        return "model unknown (an app given by --url)"
    size = "x".join(map(str, m["input_size"] or [])) or "?"
    return (f"{m['key']}: {m['model_class']} {m['depth']} x {m['width']} ({m['heads']} heads), patch {m['patch_size']}, "
            f"input {size}, {m['params_m']:.2f} M params")  # fmt: skip


def run_load(url: str, endpoint: str, file: Path, users: int, requests: int, model: str | None) -> dict:
    """Run the users; returns latencies (s), failures (with their messages) and the wall time."""
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(users + 1)

    def user(k: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as err:  # noqa: BLE001 - counted as failures
            with lock:
                errors.extend([f"user {k}: connect: {err}"] * requests)
            start.wait()
            return
        start.wait()
        for _ in range(requests):
            t0 = time.perf_counter()
            try:
                args = [handle_file(str(file))] + ([model] if model else [])
                client.predict(*args, api_name=endpoint)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
            except Exception as err:  # noqa: BLE001 - counted as failures
                with lock:
                    errors.append(f"user {k}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(users)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=10, help="requests per client (default 10)")
    p.add_argument("--endpoint", default="/fundus_classify", help="API endpoint (a 2D task; default /fundus_classify)")
    p.add_argument("--file", default=None, help="input file (default: the demo example of the endpoint's domain)")
    p.add_argument("--model", default=None, help="model key (default: the endpoint's demo model)")
    p.add_argument("--url", default=None, help="an app that is already running (no RSS figure then)")
    p.add_argument("--concurrency", type=int, default=2, help="the started app's --concurrency (default 2)")
    p.add_argument("--profile", default="default", choices=["default", "test"], help="demo models to start the app with")
    p.add_argument("--warmup", type=int, default=2, help="requests before timing (loads the model once)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.users < 1 or args.requests < 1:
        p.error("--users and --requests must be at least 1")

    from unimae.apps.demo_models import ensure_demo

    domain = args.endpoint.strip("/").split("_")[0]
    bundle = None
    if args.file is None or args.url is None:
        bundle = ensure_demo(profile=args.profile, progress=not args.json)
    file = Path(args.file) if args.file else next(p for p in bundle.examples[domain] if p.suffix.lower() != ".dcm")  # type: ignore[union-attr]
    model_info = None
    key = args.model or f"demo/{args.endpoint.strip('/')}"
    if bundle is not None and key.startswith("demo/") and key.removeprefix("demo/") in bundle.models:
        model_info = describe_model(bundle.models[key.removeprefix("demo/")], key)

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        cmd = [sys.executable, "-m", "unimae.apps.app", "--port", str(port), "--concurrency", str(args.concurrency)]
        if args.profile != "default":
            cmd += ["--demo-profile", args.profile]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t_start = time.perf_counter()
        wait_ready(url, proc, timeout=300)
        ready_s = time.perf_counter() - t_start
        if args.warmup:
            run_load(url, args.endpoint, file, 1, args.warmup, args.model)
        res = run_load(url, args.endpoint, file, args.users, args.requests, args.model)
        rss = peak_rss_mb(proc.pid) if proc is not None else None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat = res["latencies"]
    n = args.users * args.requests
    out = {
        "endpoint": args.endpoint,
        "model": model_info,
        "file": file.name,
        "users": args.users,
        "requests_per_user": args.requests,
        "requests": n,
        "completed": len(lat),
        "failures": len(res["errors"]),
        "p50_s": round(percentile(lat, 50), 4) if lat else None,
        "p95_s": round(percentile(lat, 95), 4) if lat else None,
        "mean_s": round(statistics.fmean(lat), 4) if lat else None,
        "max_s": round(max(lat), 4) if lat else None,
        "throughput_rps": round(len(lat) / res["wall_s"], 3) if res["wall_s"] > 0 else None,
        "wall_s": round(res["wall_s"], 3),
        "peak_rss_mb": round(rss, 1) if rss is not None else None,
        "server_ready_s": round(ready_s, 2) if proc is not None else None,
        "app_concurrency": args.concurrency if proc is not None else None,
        "cpu_count": os.cpu_count(),
        "errors": res["errors"][:5],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.users} users x {args.requests} requests on {args.endpoint} ({file.name}), {caption(model_info)}:")
        print(f"  latency p50 {out['p50_s']} s, p95 {out['p95_s']} s, mean {out['mean_s']} s, max {out['max_s']} s")
        print(f"  throughput {out['throughput_rps']} requests/s over {out['wall_s']} s; failures {out['failures']}")
        print(f"  server peak RSS {out['peak_rss_mb']} MiB; ready after {out['server_ready_s']} s")
        for e in out["errors"]:
            print(f"  error: {e}")
    return 0 if not res["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
