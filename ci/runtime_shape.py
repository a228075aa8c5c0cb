#!/usr/bin/env python3
"""`just bench-runtime-shape`: the async runtime's shape on two CPUs.

On one CPU pulse runs tokio's current-thread runtime (measured, see
docs/BENCHMARKS.md). On more it runs the multi-thread runtime with a worker
per CPU. The alternative is one current-thread runtime per CPU, each with
its own SO_REUSEPORT listener and its own instance pools. This harness
measures the best that alternative could do before anyone builds it:

  one process      one pulse serve allowed both CPUs: the multi-thread
                   runtime, two workers, shared pools
  one per CPU      two pulse serve processes, each pinned to one CPU (so
                   each on the current-thread runtime) with pools, listener
                   and everything else of its own: per-core runtimes with
                   nothing shared at all, the upper bound of doing the same
                   inside one process

The load is wrk with 32 connections in all (one wrk of two threads against
the one process; two wrks of one thread, 16 connections each, against the
two). wrk shares the two CPUs with the servers, as it must on a two-CPU
machine, so requests/s is the load generator's too; the figure to compare is
the servers' CPU time per request (user + system of all their threads over
the round, divided by the requests wrk counted). Rounds alternate; medians.

Usage: runtime_shape.py --pulse BIN --health WASM --health-p3 WASM [--rounds N] [--duration S]
"""
import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the same Server and wrk as just bench)

BOTH = "0,1"
CONNECTIONS = 32


def modes(args, cache):
    serve = [args.pulse, "serve", "--listen", "127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0", "--cache-dir", cache]
    return {
        "fresh": serve + ["--handler", args.health],
        "reuse 128": serve + ["--handler", args.health, "--max-instance-reuse", "128"],
        "WASI 0.3": serve + ["--handler", args.health_p3],
    }


def measure(servers, duration, wrk_threads):
    """Starts `servers`, loads each with its share of CONNECTIONS from a wrk
    of `wrk_threads` threads (all at once, on both CPUs), after a warm-up,
    and stops them; returns requests/s, the servers' CPU µs per request,
    and errors, over them all."""
    connections = CONNECTIONS // len(servers)
    load = lambda s, seconds: bench.wrk(s.port, seconds, connections, cpus=BOTH, threads=wrk_threads)
    try:
        for s in servers:
            s.start()
        with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: load(s, bench.WARM_UP_S), servers))
            before = sum(s.cpu_seconds() for s in servers)
            results = list(pool.map(lambda s: load(s, duration), servers))
            cpu = sum(s.cpu_seconds() for s in servers) - before
    finally:
        for s in servers:
            s.stop()
    requests = sum(r["requests"] for r in results)
    return requests / duration, cpu * 1e6 / max(requests, 1), sum(r["errors"] for r in results)


def one_process(command, duration):
    return measure([bench.Server("one process", command, "", cpus=BOTH)], duration, wrk_threads=2)


def one_per_cpu(command, duration):
    return measure([bench.Server(f"cpu {c}", command, "", cpus=str(c)) for c in (0, 1)], duration, wrk_threads=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pulse", required=True)
    ap.add_argument("--health", required=True)
    ap.add_argument("--health-p3", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("error: needs wrk (Debian: apt-get install wrk)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("error: the runtime shape on two CPUs needs a machine with two")
    cache = tempfile.mkdtemp(prefix="pulse-shape-cache-")
    shapes = {"one process (multi-thread, 2 workers)": one_process, "one per CPU (current-thread each)": one_per_cpu}
    results = {}
    try:
        for mode, command in modes(args, cache).items():
            for r in range(args.rounds):
                names = list(shapes)
                for name in names if r % 2 == 0 else reversed(names):
                    rps, cpu_us, errors = shapes[name](command, args.duration)
                    results.setdefault((mode, name), []).append((rps, cpu_us, errors))
                    print(f"{mode:9} round {r + 1}/{args.rounds} {name}: {rps:,.0f} requests/s, "
                          f"{cpu_us:.1f} CPU µs per request, {errors} errors", file=sys.stderr)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"Machine: {bench.machine()}. wrk {CONNECTIONS} connections in all, {args.duration} s rounds after "
          f"{bench.WARM_UP_S} s of warm-up, {args.rounds} rounds alternating; medians (range).\n")
    print("| mode | shape | requests/s | servers' CPU µs per request | errors |")
    print("|---|---|---|---|---|")
    for (mode, name), runs in results.items():
        rps = [x[0] for x in runs]
        cpu = [x[1] for x in runs]
        print(f"| {mode} | {name} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | "
              f"{statistics.median(cpu):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) | {sum(x[2] for x in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
