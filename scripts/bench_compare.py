#!/usr/bin/env python3
"""Compare ddf with its peers and the physical limit of each backend, in one run.

Run through scripts/bench-compare (it installs the servers and the Python peers and builds ddf).
Starts its own redis-server and memcached on free loopback ports and stops them at the end.
Prints one table of ratios (ddf / peer) and, with --json FILE, writes every figure.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDF = os.path.join(ROOT, "target", "release", "ddf-cache")
RAW = os.path.join(ROOT, "target", "release", "examples", "raw_loop")
VALUE = "x" * 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


class Servers:
    def __init__(self, tmp):
        self.procs = []
        self.redis_port = free_port()
        self.memcached_port = free_port()
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.procs.append(subprocess.Popen(
            [redis, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        mc = shutil.which("memcached") or "/usr/bin/memcached"
        cmd = [mc, "-l", "127.0.0.1", "-p", str(self.memcached_port), "-U", "0", "-m", "256"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_port(self.redis_port)
        wait_port(self.memcached_port)

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def rate(result):
    """Operations per second implied by the median latency: steadier than a throughput on a
    shared machine, where a few stalls of other processes dominate the mean."""
    return 1e6 / result["median_us"] if result.get("median_us") else 0.0


def loop(fn, n):
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    secs = time.perf_counter() - start
    lat.sort()
    return {"ops_per_sec": n / secs, "median_us": lat[n // 2] * 1e6,
            "p99_us": lat[n * 99 // 100] * 1e6}


def ddf_bench(env, backend, ops, threads="1,2", batch=100):
    out = subprocess.run(
        [DDF, "-b", backend, "bench", "--ops", str(ops), "--threads", threads,
         "--batch", str(batch), "--among", "0", "--json"],
        env=env, check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    return {r["op"]: r for r in doc["results"]}


def redis_benchmark(port, pipeline, n, clients=1):
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients),
         "-P", str(pipeline),
         "-n", str(n), "-d", "100", "-r", "1000", "-t", "get,set", "--csv"],
        check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] in ("SET", "GET"):
            res[cells[0].lower()] = float(cells[1])
            if len(cells) > 4:  # "p50_latency_ms"
                res[cells[0].lower() + "_p50_us"] = float(cells[4]) * 1000
    return res


def raw_loop(proto, port, n):
    out = subprocess.run([RAW, proto, f"127.0.0.1:{port}", str(n)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def cli_get_latency(env, n=30):
    subprocess.run([DDF, "-b", "pickle", "set", "bench:cli", "v"], env=env, check=True)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([DDF, "-b", "pickle", "get", "bench:cli"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def ping_during_invalidate(env, port, total, matching):
    """Fills Redis with `total` keys (`matching` under one prefix), runs ddf's
    invalidate_pattern, and measures the worst PING latency another client sees meanwhile."""
    import redis
    r = redis.Redis(host="127.0.0.1", port=port)
    pipe = r.pipeline(transaction=False)
    for i in range(total):
        key = f"ddf:inv:{i}" if i < matching else f"ddf:other:{i}"
        pipe.set(key, VALUE)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    worst = [0.0]
    stop = threading.Event()

    def pinger():
        c = redis.Redis(host="127.0.0.1", port=port)
        while not stop.is_set():
            t = time.perf_counter()
            c.ping()
            worst[0] = max(worst[0], time.perf_counter() - t)
            time.sleep(0.0005)

    th = threading.Thread(target=pinger)
    th.start()
    t = time.perf_counter()
    out = subprocess.run([DDF, "-b", "redis", "invalidate", "inv:"], env=env, check=True,
                         capture_output=True, text=True).stdout
    took = time.perf_counter() - t
    stop.set()
    th.join()
    r.flushdb()
    return {"removed": int(out.strip()), "seconds": took, "worst_ping_ms": worst[0] * 1e3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=20000)
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--only", choices=["pickle", "redis", "memcached"], action="append")
    args = ap.parse_args()
    only = set(args.only or ["pickle", "redis", "memcached"])
    n = args.ops
    tmp = tempfile.mkdtemp(prefix="ddf-bench-", dir=os.path.expanduser("~"))
    servers = Servers(tmp)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("DDF_") or k.startswith("REDIS_"))}
    env.update({
        "DDF_CACHE_PICKLE_DIR": os.path.join(tmp, "ddf"),
        "DDF_CACHE_REDIS_HOST": "127.0.0.1",
        "DDF_CACHE_REDIS_PORT": str(servers.redis_port),
        "DDF_CACHE_MEMCACHED_SERVERS": f"127.0.0.1:{servers.memcached_port}",
        "DDF_CACHE_FALLBACK": "error",
    })
    rows = []  # (backend, measure, ddf, peer name, peer, unit)
    figures = {}

    def row(backend, what, ours, peer_name, peer):
        rows.append((backend, what, ours, peer_name, peer))

    try:
        if "pickle" in only:
            import diskcache
            dc = diskcache.Cache(os.path.join(tmp, "diskcache"))
            d_set = loop(lambda i: dc.set(f"k{i}", VALUE), n)
            d_get = loop(lambda i: dc.get(f"k{i}"), n)
            ours = {k[:-5]: v for k, v in ddf_bench(env, "pickle", n, threads="1").items()}
            figures["pickle"] = {"ddf": ours, "diskcache": {"set": d_set, "get": d_get}}
            row("pickle", "get (hit), ops/s", ours["get (hit)"]["ops_per_sec"], "diskcache",
                d_get["ops_per_sec"])
            row("pickle", "set, ops/s", ours["set"]["ops_per_sec"], "diskcache",
                d_set["ops_per_sec"])
            row("pickle", "get (hit), 1/median", rate(ours["get (hit)"]), "diskcache",
                rate(d_get))
            row("pickle", "set, 1/median", rate(ours["set"]), "diskcache", rate(d_set))
            ms = cli_get_latency(env)
            figures["cli_get_ms"] = ms
            rows.append(("pickle", "CLI start + get (ms)", ms, "target", 5.0))
        if "redis" in only:
            import redis
            port = servers.redis_port
            rb1 = redis_benchmark(port, 1, n)
            rb16 = redis_benchmark(port, 16, n * 5)
            rb1c2 = redis_benchmark(port, 1, n, clients=2)
            raw = raw_loop("redis", port, n)
            rc = redis.Redis(host="127.0.0.1", port=port)
            py_set = loop(lambda i: rc.set(f"py:{i % 1000}", VALUE), n)
            py_get = loop(lambda i: rc.get(f"py:{i % 1000}"), n)
            both = ddf_bench(env, "redis", n)
            one = {k[:-5]: v for k, v in both.items() if k.endswith(" [1t]")}
            two = {k[:-5]: v for k, v in both.items() if k.endswith(" [2t]")}
            figures["redis"] = {"ddf": one, "ddf_2_threads": two, "redis-benchmark -P 1": rb1,
                                "redis-benchmark -P 16": rb16, "redis-benchmark -c 2": rb1c2, "raw": raw,
                                "redis-py": {"set": py_set, "get": py_get}}
            row("redis", "get, 1/median", rate(one["get (hit)"]), "redis-benchmark -P 1, 1/p50",
                1e6 / rb1["get_p50_us"] if rb1.get("get_p50_us") else rb1.get("get", 0))
            row("redis", "set, 1/median", rate(one["set"]), "redis-benchmark -P 1, 1/p50",
                1e6 / rb1["set_p50_us"] if rb1.get("set_p50_us") else rb1.get("set", 0))
            row("redis", "get, ops/s", one["get (hit)"]["ops_per_sec"], "redis-benchmark -P 1",
                rb1.get("get", 0))
            row("redis", "get_many (100) keys/s", one["get_many (100)"]["ops_per_sec"],
                "redis-benchmark -P 16", rb16.get("get", 0))
            row("redis", "set_many (100) keys/s", one["set_many (100)"]["ops_per_sec"],
                "redis-benchmark -P 16", rb16.get("set", 0))
            row("redis", "get, 2 threads", two["get (hit)"]["ops_per_sec"], "ddf, 1 thread",
                one["get (hit)"]["ops_per_sec"])
            row("redis", "(limit) redis-benchmark get -c 2", rb1c2.get("get", 0),
                "redis-benchmark -c 1", rb1.get("get", 0))
            row("redis", "get", one["get (hit)"]["ops_per_sec"], "redis-py",
                py_get["ops_per_sec"])
            row("redis", "get, 1/median", rate(one["get (hit)"]), "raw RESP loop",
                rate(raw["get"]))
            row("redis", "set, 1/median", rate(one["set"]), "raw RESP loop", rate(raw["set"]))
            inv = ping_during_invalidate(env, port, 100_000, 10_000)
            figures["redis_invalidate"] = inv
            rows.append(("redis", f"invalidate {inv['removed']} of 100000: worst PING (ms)",
                         inv["worst_ping_ms"], "took (ms)", inv["seconds"] * 1e3))
        if "memcached" in only:
            from pymemcache.client.base import Client
            port = servers.memcached_port
            raw = raw_loop("memcached", port, n)
            mc = Client(("127.0.0.1", port))
            py_set = loop(lambda i: mc.set(f"py:{i % 1000}", VALUE), n)
            py_get = loop(lambda i: mc.get(f"py:{i % 1000}"), n)
            one = {k[:-5]: v for k, v in ddf_bench(env, "memcached", n, threads="1").items()}
            figures["memcached"] = {"ddf": one, "raw": raw,
                                    "pymemcache": {"set": py_set, "get": py_get}}
            row("memcached", "get, 1/median", rate(one["get (hit)"]), "bare meta loop",
                rate(raw["get"]))
            row("memcached", "set, 1/median", rate(one["set"]), "bare meta loop",
                rate(raw["set"]))
            row("memcached", "get", one["get (hit)"]["ops_per_sec"], "pymemcache",
                py_get["ops_per_sec"])
            row("memcached", "get_many (100) keys/s", one["get_many (100)"]["ops_per_sec"],
                "bare meta loop (1 key)", raw["get"]["ops_per_sec"])
    finally:
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("ratio = ddf / peer (operations per second; for the latency rows, the rate one median")
    print("call implies). Above 1: ddf is faster, except for the PING and CLI rows (ms, lower is better).")
    print(f"{'backend':<10} {'measure':<44} {'ddf':>12} {'peer':<30} {'peer value':>12} {'ratio':>7}")
    for backend, what, ours, peer_name, peer in rows:
        ratio = ours / peer if peer else float("nan")
        print(f"{backend:<10} {what:<44} {ours:>12.1f} {peer_name:<30} {peer:>12.1f} {ratio:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "figures": figures}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
