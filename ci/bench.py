#!/usr/bin/env python3
"""`just bench`: pulse serve side by side with its baselines, on one machine.

Servers (each answering GET /healthcheck with the same JSON), in each
instance mode both hosts offer:
  pulse          pulse serve, the WASI 0.2 health component, a fresh
                 instance per request (the default)
  pulse-reuse    the same, each instance reused for up to 128 requests
  pulse-p3       pulse serve, the WASI 0.3 health component (health-p3), with
                 its defaults (reuse: 128 requests, 16 at once)
  wasmtime, wasmtime-reuse, wasmtime-p3
                 wasmtime serve 48.0.8 in the same three modes (skipped, with
                 a note, when the binary is not available)
  pulse-js       pulse serve, the 13 MB JavaScript handler (health-js), fresh
                 instances (with --health-js; wasmtime-js beside it)
  native         bench-native, a plain hyper server (the floor of what is
                 possible)
  express        the original Node.js Express app (skipped when node is
                 missing)

Every server runs pinned to one CPU and wrk to another. Rounds alternate
between the servers, each server alone on its CPU (started for its round,
warmed up for a second, stopped after it); the report gives medians over
the rounds of requests/s, p50/p99 latency, CPU time per request and the
resident memory after the load, and the
cold start (process start to the first 200, median of several starts) --
for pulse both compiling at start and from its compilation cache.

Feature costs, in the same rounds (with --faulty): the health handler
behind two routes against one (`pulse-routes`), and the faulty fixture's
`/kv/incr` on a memory store and on a Redis store (a redis-server the bench
starts, pinned beside wrk) against its plain answer (`faulty-plain`).

Usage: bench.py --pulse BIN --health WASM --health-p3 WASM --native BIN [--wasmtime BIN]
                [--health-js WASM] [--faulty WASM] [--express DIR] [--rounds N] [--duration S] [--connections N]
                [--output FILE] [--smoke]
--smoke runs pulse alone (each of its modes) for one short round and fails unless the report is
produced with zero errors (just test runs it so the harness cannot rot).
"""
import argparse
import atexit
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SERVER_CPU = "1"
LOAD_CPU = "0"
# Seconds of load before each measured round, discarded.
WARM_UP_S = 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
            return r.status
    except Exception:
        return None


def server_env():
    """The environment of every server: this one, as a deployment has it.
    RUST_BACKTRACE and RUST_LIB_BACKTRACE are dropped: when set, Wasmtime
    captures a backtrace each time a WASI 0.3 instance is dropped (in
    ComponentStoreData::drop_fibers_and_futures), 7 % of the CPU of both
    hosts' WASI 0.3 servers in a profile, which no pod pays."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    env["PULSE_LOG_FORMAT"] = "json"
    return env


class Server:
    def __init__(self, name, command, note, counterpart=None, path="/healthcheck", cpus=None):
        self.name, self.command, self.note, self.path = name, command, note, path
        # The CPUs it may run on (taskset's list); SERVER_CPU unless given.
        self.cpus = cpus or SERVER_CPU
        # The wasmtime serve server in the same mode, for pulse's servers.
        self.counterpart = counterpart
        self.process = None
        self.port = None

    def start(self):
        """Starts the server pinned to its CPUs; returns seconds to the first 200."""
        self.port = free_port()
        argv = ["taskset", "-c", self.cpus] + [a.replace("{port}", str(self.port)) for a in self.command]
        started = time.perf_counter()
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env())
        deadline = started + 30
        while time.perf_counter() < deadline:
            if get_status(self.port) == 200:
                return time.perf_counter() - started
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {' '.join(argv)}")
            time.sleep(0.0005)
        raise RuntimeError(f"{self.name} did not answer 200 within 30 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cpu_seconds(self):
        """User and system CPU time of all the server's threads so far."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


def parse_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def wrk(port, duration, connections, path="/healthcheck", cpus=LOAD_CPU, threads=1):
    out = subprocess.run(
        ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}{path}"],
        check=True, capture_output=True, text=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": parse_ms(latency["50"]),
        "p99": parse_ms(latency["99"]),
        "errors": errors,
    }


def cold_start(server, runs):
    # One untimed start first, so that compilation caches are warm.
    server.start()
    server.stop()
    times = []
    for _ in range(runs):
        times.append(server.start())
        server.stop()
    return statistics.median(times) * 1000


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "–"


# The goals of issue 14: (pulse server, wasmtime server, least ratio).
# Issue 23's goals: ahead of wasmtime serve in every mode, on the same component.
RATIO_GOALS = [("pulse", "wasmtime", 2.0), ("pulse-reuse", "wasmtime-reuse", 1.3), ("pulse-p3", "wasmtime-p3", 1.3),
               ("pulse-js", "wasmtime-js", 1.3)]
NATIVE_GOAL = 0.25
RSS_GOAL_MB = 40
IMAGE_GOAL_MB = 20


def goals(med, rss, image_bytes=None):
    """The goals, each with the figure of this run and whether it is met."""
    out = ["| goal | this run | met |", "|---|---|---|"]

    def row(goal, figure, met):
        out.append(f"| {goal} | {figure} | {'yes' if met else 'no'} |")

    for mine, theirs, least in RATIO_GOALS:
        if mine in med and theirs in med:
            r = med[mine]["rps"] / med[theirs]["rps"]
            row(f"{mine} ≥ {least}x {theirs} (requests/s)", f"{r:.2f}x", r >= least)
            row(f"{mine} p99 ≤ {theirs} p99", f"{med[mine]['p99']:.2f} vs {med[theirs]['p99']:.2f} ms",
                med[mine]["p99"] <= med[theirs]["p99"])
    mine = [n for n in ("pulse", "pulse-reuse", "pulse-p3") if n in med]
    if "native" in med and mine:
        best = max(mine, key=lambda n: med[n]["rps"])
        r = med[best]["rps"] / med["native"]["rps"]
        row(f"best pulse mode ({best}) ≥ {NATIVE_GOAL:.0%} of native", f"{r:.0%}", r >= NATIVE_GOAL)
    for n in mine:
        row(f"{n} RSS after load ≤ {RSS_GOAL_MB} MB", f"{rss[n]:.1f} MB", rss[n] <= RSS_GOAL_MB)
    if image_bytes:
        row(f"image (`just image`) ≤ {IMAGE_GOAL_MB} MB", f"{image_bytes / 1e6:.1f} MB", image_bytes <= IMAGE_GOAL_MB * 1e6)
    return "\n".join(out)


def titled_table(title, header, rows):
    """A markdown table under `title`, after a blank line; nothing when
    there are no rows (the servers it compares did not run)."""
    if not rows:
        return ""
    rule = "|" + "---|" * header.count(" | ") + "---|"
    return "\n".join(["", "", title, "", header, rule, *rows])


def cpu_per_request(med):
    """pulse's CPU time per request against wasmtime serve's in each mode:
    not a goal, but it moved less than requests/s in the disturbed rounds
    of earlier runs, so it is worth reading beside a ratio near its line."""
    rows = [f"| {mine} / {theirs} | {med[mine]['cpu_us']:.1f} | {med[theirs]['cpu_us']:.1f} | "
            f"{med[mine]['cpu_us'] / med[theirs]['cpu_us']:.2f}x |"
            for mine, theirs, _ in RATIO_GOALS if mine in med and theirs in med]
    return titled_table("CPU time per request (user + system, all threads, over the rounds), same rounds:",
                        "| mode | pulse µs | wasmtime serve µs | pulse's share |", rows)


def feature_servers(args, pulse_cmd, cache, notes):
    """The servers whose differences are the cost of a feature: two routes
    against one, and a keyvalue call per request (memory, Redis) against
    none. Their configuration files go in a directory of their own
    (Wasmtime trims what it does not know from the cache directory)."""
    serve = [a for a in pulse_cmd if a not in ("--handler", args.health)] + ["--cache-dir", cache]
    configs = tempfile.mkdtemp(prefix="pulse-bench-config-")
    atexit.register(shutil.rmtree, configs, True)

    def config(name, text):
        path = os.path.join(configs, f"{name}.toml")
        with open(path, "w") as f:
            f.write(text)
        return ["--config", path]

    routes = config("routes", f'[[route]]\npath = "/healthcheck"\ncomponent = "{args.health}"\n\n'
                              f'[[route]]\npath = "/api/..."\nname = "other"\ncomponent = "{args.health}"\n')
    servers = [
        Server("pulse-routes", [pulse_cmd[0], *routes, *serve[1:]],
               "pulse serve, the same, behind two routes (/healthcheck, /api/...)"),
        Server("faulty-plain", [*pulse_cmd[:-1], args.faulty, "--cache-dir", cache],
               "pulse serve, faulty, GET / (no keyvalue call)", path="/"),
    ]
    memory = config("kv-memory", f'[keyvalue.default]\nbackend = "memory"\n\n[handler]\ncomponent = "{args.faulty}"\nkeyvalue = ["default"]\n')
    servers.append(Server("faulty-kv-memory", [pulse_cmd[0], *memory, *serve[1:]],
                          "pulse serve, faulty, GET /kv/incr: one increment, memory store", path="/kv/incr?key=bench"))
    if shutil.which("redis-server"):
        port = free_port()
        process = subprocess.Popen(["taskset", "-c", LOAD_CPU, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        redis = config("kv-redis", f'[keyvalue.default]\nbackend = "redis"\nurl = "redis://127.0.0.1:{port}"\n\n'
                                   f'[handler]\ncomponent = "{args.faulty}"\nkeyvalue = ["default"]\n')
        server = Server("faulty-kv-redis", [pulse_cmd[0], *redis, *serve[1:]],
                        "pulse serve, faulty, GET /kv/incr: one increment, Redis store", path="/kv/incr?key=bench")
        server.redis = process
        servers.append(server)
    else:
        notes.append("faulty-kv-redis skipped: no redis-server")
    return servers


def feature_costs(med):
    """What a second route and a keyvalue call cost, from the same rounds."""
    rows = [("a second route", "pulse-routes", "pulse"),
            ("an increment in a memory store", "faulty-kv-memory", "faulty-plain"),
            ("an increment in a Redis store", "faulty-kv-redis", "faulty-plain")]
    out = []
    for what, with_, without in rows:
        if with_ in med and without in med:
            a, b = med[with_], med[without]
            out.append(f"| {what} | {a['rps']:,.0f} | {b['rps']:,.0f} | {ratio(a['rps'], b['rps'])} | "
                       f"{a['p99']:.2f} / {b['p99']:.2f} |")
    return titled_table("Feature costs, same rounds:",
                        "| feature | with | without | requests/s ratio | p99 ms with / without |", out)


NOTES_MARKER = "<!-- notes: kept by just bench -->"


def write_document(path, report, command):
    """Writes the report into `path`, keeping what follows NOTES_MARKER."""
    notes = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if NOTES_MARKER in text:
            notes = text[text.index(NOTES_MARKER):]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("# Benchmarks\n\n")
        f.write(f"Made by `just bench` on {time.strftime('%Y-%m-%d', time.gmtime())}, which ran:\n\n")
        f.write(f"```\n{command}\n```\n\n")
        f.write(report)
        f.write("\n" + (notes or NOTES_MARKER + "\n"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pulse", required=True)
    ap.add_argument("--health", required=True)
    ap.add_argument("--health-p3", required=True)
    ap.add_argument("--native")
    ap.add_argument("--health-js")
    ap.add_argument("--faulty")
    ap.add_argument("--wasmtime")
    ap.add_argument("--express")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--cold-starts", type=int, default=9)
    ap.add_argument("--output")
    ap.add_argument("--image-bytes", type=int, help="the size of the image `just image` built, for its goal")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.duration, args.cold_starts = 1, 1, 2
    if not shutil.which("wrk"):
        sys.exit("error: just bench needs wrk (Debian: apt-get install wrk)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("error: the bench pins server and load generator to two different CPUs; this machine has one")

    cache = tempfile.mkdtemp(prefix="pulse-bench-cache-")
    pulse_cmd = [args.pulse, "serve", "--listen", "127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                 "--handler", args.health]
    pulse_p3_cmd = [args.pulse, "serve", "--listen", "127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                    "--handler", args.health_p3, "--cache-dir", cache]
    servers = [
        Server("pulse", pulse_cmd + ["--cache-dir", cache],
               "pulse serve, WASI 0.2, fresh instance per request", "wasmtime"),
        Server("pulse-reuse", pulse_cmd + ["--cache-dir", cache, "--max-instance-reuse", "128"],
               "pulse serve, WASI 0.2, --max-instance-reuse 128", "wasmtime-reuse"),
        Server("pulse-p3", pulse_p3_cmd, "pulse serve, WASI 0.3 (defaults: reuse 128, 16 at once)", "wasmtime-p3"),
    ]
    notes = []
    redis = None
    if args.health_js and os.path.exists(args.health_js):
        servers.append(Server("pulse-js", pulse_cmd[:-1] + [args.health_js, "--cache-dir", cache],
                              "pulse serve, the 13 MB JavaScript handler, fresh", "wasmtime-js"))
    if args.faulty:
        servers += feature_servers(args, pulse_cmd, cache, notes)
        redis = next((s for s in servers if s.name == "faulty-kv-redis"), None)
        redis = redis and redis.redis
    if not args.smoke:
        if args.wasmtime and os.access(args.wasmtime, os.X_OK):
            wasmtime = [args.wasmtime, "serve", "-Scli", "--addr", "127.0.0.1:{port}"]
            servers += [
                Server("wasmtime", wasmtime + [args.health], "wasmtime serve 48.0.8 -Scli, WASI 0.2, fresh"),
                Server("wasmtime-reuse", wasmtime + ["--max-instance-reuse-count", "128", args.health],
                       "wasmtime serve, WASI 0.2, --max-instance-reuse-count 128"),
                Server("wasmtime-p3", wasmtime + [args.health_p3],
                       "wasmtime serve, WASI 0.3 (its defaults)"),
            ]
            if any(s.name == "pulse-js" for s in servers):
                servers.append(Server("wasmtime-js", wasmtime + [args.health_js],
                                      "wasmtime serve, the 13 MB JavaScript handler, fresh"))
        else:
            notes.append(f"wasmtime serve skipped: no binary at {args.wasmtime!r} (see just bench-wasmtime)")
        if args.native:
            servers.append(Server("native", [args.native, "127.0.0.1:{port}"], "bench-native (hyper, one thread)"))
        if args.express and shutil.which("node") and os.path.isdir(os.path.join(args.express, "node_modules")):
            servers.append(Server("express", ["node", os.path.join(args.express, "app.js"), "{port}"],
                                  f"Express on Node.js {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}"))
        else:
            notes.append("express skipped: needs node and `npm install` in bench/express")

    # Cold starts, each server alone.
    cold = {}
    uncached = Server("pulse-uncached", pulse_cmd, "")
    cold["pulse-uncached"] = cold_start(uncached, args.cold_starts)
    for server in servers:
        cold[server.name] = cold_start(server, args.cold_starts)

    # Load rounds; the order of servers rotates each round.
    # Each server runs alone on its core: started for its round, warmed up,
    # stopped after it. An idle pulse server's epoch ticker (it wakes every
    # millisecond while the server keeps an instance) preempts whatever runs
    # on that core: a server whose own ticker could not preempt it was
    # preempted 3,689 times in 4 s of load beside one idle pulse server,
    # ~990 times alone (nonvoluntary_ctxt_switches of its threads).
    results = {s.name: [] for s in servers}
    try:
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                s.start()
                wrk(s.port, WARM_UP_S, args.connections, s.path)
                cpu = s.cpu_seconds()
                result = wrk(s.port, args.duration, args.connections, s.path)
                # CPU time per request: it moved less than requests/s when
                # something else on the machine slowed every server at once.
                result["cpu_us"] = (s.cpu_seconds() - cpu) * 1e6 / max(result["requests"], 1)
                result["rss"] = s.rss_mb()
                s.stop()
                results[s.name].append(result)
                print(f"round {r + 1}/{args.rounds} {s.name:9} {results[s.name][-1]}", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
        if redis:
            redis.terminate()
            redis.wait()
        shutil.rmtree(cache, ignore_errors=True)

    med = {name: {k: statistics.median(x[k] for x in runs) for k in ("rps", "p50", "p99", "cpu_us")} for name, runs in results.items()}
    rss = {name: statistics.median(x["rss"] for x in runs) for name, runs in results.items()}
    errors = {name: sum(x["errors"] for x in runs) for name, runs in results.items()}
    base_n = med.get("native", {}).get("rps")
    base_e = med.get("express", {}).get("rps")
    lines = [
        "| server | requests/s | p50 ms | p99 ms | CPU µs per request | RSS after load MB | cold start ms | vs wasmtime serve, same mode | vs Express | vs native | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in servers:
        m = med[s.name]
        same_mode = med.get(s.counterpart, {}).get("rps") if s.counterpart else None
        lines.append(f"| {s.note} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_us']:.1f} | {rss[s.name]:.1f} | "
                     f"{cold[s.name]:.1f} | {ratio(m['rps'], same_mode)} | {ratio(m['rps'], base_e)} | {ratio(m['rps'], base_n)} | {errors[s.name]} |")
    lines.append(f"| pulse serve, compiling at start (no cache) | | | | | | {cold['pulse-uncached']:.1f} | | | | |")
    table = "\n".join(lines) + "\n\n" + goals(med, rss, args.image_bytes) + cpu_per_request(med) + feature_costs(med)
    header = (f"Machine: {machine()}. Servers pinned to CPU {SERVER_CPU}, wrk (1 thread, {args.connections} "
              f"connections, {args.duration} s per round after {WARM_UP_S} s of warm-up) to CPU {LOAD_CPU}; "
              f"{args.rounds} rounds, servers alternating, each alone on its CPU for its round; medians. Cold start: process start to the first 200, median of {args.cold_starts}.")
    report = header + "\n\n" + table + "\n" + "".join(f"\n{n}" for n in notes) + "\n"
    print(report)
    if args.output:
        write_document(args.output, report, " ".join(sys.argv))
    if args.smoke:
        for name in results:
            assert results[name] and med[name]["rps"] > 0, f"{name}: no requests were answered"
            assert errors[name] == 0, f"{name}: {errors[name]} requests failed"
        print("bench smoke: ok (report produced for each pulse mode, zero errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
