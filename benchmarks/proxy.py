"""gatekeep as a reverse proxy, side by side with what a Python user would use instead.

Run with ``python -m benchmarks proxy`` (``--help`` for the options).  In one
go it starts the hello-world upstream (``benchmarks._upstream_app``) and then,
one after another, each target in front of it, and drives a 1 KiB GET and a
64 KiB POST through each with ``wrk`` (one thread, 50 connections by default):

- ``direct``: wrk straight at the upstream, the ceiling for everyone;
- ``gatekeep``: ``gatekeep.asgi(gatekeep.Gateway(...))``, one route, no filters;
- ``aiohttp``, ``httpx``, ``asgiproxy``: the Python peers (``benchmarks._peers``);
- ``nginx``: ``proxy_pass`` with upstream keep-alive, one worker, if installed.

Every Python target runs on the same uvicorn settings, each in its own process;
only one target is ever under load.  For each run it records requests/s, p50
and p99 latency (wrk's own histogram, reported by a Lua ``done`` hook), errors,
and the CPU time per request of the proxy process and of the upstream (psutil
user + system over the measured run, divided by wrk's request count).  Each
target gets a one-second warm-up per case first.

``--memory`` instead pushes ``--requests`` (default 200 000) requests through
gatekeep in bounded wrk runs and reports its RSS before and after.
``--profile`` runs gatekeep under load with py-spy (or cProfile) and prints the
top functions by own and cumulative time.

Results go to ``benchmarks/results/proxy.json`` (sections are merged, so a
``--memory`` run keeps the last table).  Every child process is killed at the
end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "proxy.json"
PYTHON_PEERS = ("aiohttp", "httpx", "asgiproxy")
TARGETS = ("direct", "gatekeep", *PYTHON_PEERS, "nginx")
POST_SIZE = 64 * 1024
GET_SIZE = 1024

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "GKRESULT {\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, " ..
    "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, \\"mean_us\\": %.1f, " ..
    "\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
SCRIPTS = {
    "GET 1 KiB": 'wrk.method = "GET"\n' + _DONE,
    "POST 64 KiB": (
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {POST_SIZE})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n' + _DONE
    ),
}


class Interrupted(Exception):
    """SIGTERM arrived; unwind so every child is killed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted


# --------------------------------------------------------------------- processes


class Fleet:
    """Every process this benchmark starts; all of them die when it ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        # A worker left behind by its parent (nginx) shares the process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(fleet: Fleet, name: str, port: int, timeout: float = 30.0) -> None:
    """Wait until ``name`` answers a GET on ``port``, or raise with its log."""
    proc = fleet.procs[name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{fleet.log_tail(name)}")
        try:
            http("GET", f"http://127.0.0.1:{port}/ready", timeout=1.0)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{fleet.log_tail(name)}")


def check(port: int) -> None:
    """Both cases answer correctly before anything is measured."""
    status, body = http("GET", f"http://127.0.0.1:{port}/item/1?q=2")
    if status != 200 or len(body) != GET_SIZE:
        raise RuntimeError(f"GET answered {status} with {len(body)} bytes: {body[:200]!r}")
    status, body = http("POST", f"http://127.0.0.1:{port}/upload", b"x" * POST_SIZE)
    if status != 200 or body.strip() != str(POST_SIZE).encode():
        raise RuntimeError(f"POST answered {status}: {body[:200]!r}")


def python_server(fleet: Fleet, name: str, kind: str, port: int, upstream: str | None, *extra: str) -> None:
    argv = [sys.executable, "-m", "benchmarks._peers", kind, str(port)]
    if upstream:
        argv.append(upstream)
    fleet.start(name, argv + list(extra))
    wait_ready(fleet, name, port)


def nginx_server(fleet: Fleet, port: int, upstream_port: int) -> None:
    from ._peers import nginx_conf

    prefix = fleet.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(str(prefix), port, upstream_port))
    fleet.start(
        "nginx",
        [nginx_binary() or "nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
    )
    wait_ready(fleet, "nginx", port)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


# --------------------------------------------------------------------- measuring


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, Any]:
    wrk_bin = shutil.which("wrk")
    if wrk_bin is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    argv = [
        wrk_bin, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
        "--latency", "-s", str(script), url,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("GKRESULT "):
            result: dict[str, Any] = json.loads(line[len("GKRESULT ") :])
            result["errors"] = sum(result.pop(k) for k in ("connect", "read", "write", "status", "timeout"))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk gave no result:\n{text}")


def measure(
    url: str, script: Path, seconds: float, connections: int, proxy_pid: int | None, upstream_pid: int
) -> dict[str, Any]:
    wrk(url, script, 1, connections)  # warm-up: pools filled, code paths hot
    proxy_before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    upstream_before = cpu_seconds(upstream_pid)
    machine_before = _busy_seconds()
    wrk_before = _children_cpu()
    result = wrk(url, script, seconds, connections)
    wrk_cpu = _children_cpu() - wrk_before
    busy = _busy_seconds() - machine_before
    proxy_cpu = cpu_seconds(proxy_pid) - proxy_before if proxy_pid else 0.0
    upstream_cpu = cpu_seconds(upstream_pid) - upstream_before
    requests = max(result["requests"], 1)
    result["proxy_cpu_us"] = proxy_cpu / requests * 1e6 if proxy_pid else None
    result["upstream_cpu_us"] = upstream_cpu / requests * 1e6
    wall = result["duration_us"] / 1e6
    # What the machine spent on anything but this run: other people's work on a shared box.
    result["wrk_cpu_pct"] = round(100 * wrk_cpu / wall, 1)
    result["machine_busy_pct"] = round(100 * busy / wall / (os.cpu_count() or 1), 1)
    result["foreign_cpu_pct"] = round(100 * max(0.0, busy - wrk_cpu - proxy_cpu - upstream_cpu) / wall, 1)
    return result


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------- reporting


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dist in (
        "gatekeep",
        "uvicorn",
        "httptools",
        "uvloop",
        "aiohttp",
        "httpx",
        "asgiproxy",
        "h11",
        "anyio",
        "psutil",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    nginx = nginx_binary()
    if nginx:
        probe = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
        found["nginx"] = (probe.stderr or probe.stdout).strip().rpartition("/")[2] or None
    else:
        found["nginx"] = None
    wrk_bin = shutil.which("wrk")
    if wrk_bin:
        probe = subprocess.run([wrk_bin, "--version"], capture_output=True, text=True, timeout=10)
        found["wrk"] = (probe.stdout or probe.stderr).split("Copyright")[0].strip().removeprefix("wrk ")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        found["gatekeep_commit"] = probe.stdout.strip() or None
    return found


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def _us(us: float | None) -> str:
    return "—" if us is None else f"{us:.0f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| target | case | requests/s | p50 ms | p99 ms | proxy CPU µs/req | upstream CPU µs/req"
        " | errors | other load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, cases in results.items():
        if "error" in cases:
            lines.append(
                f"| {target} | — | not available: {cases['error'].splitlines()[0][:80]} | | | | | | |"
            )
            continue
        for case, r in cases.items():
            lines.append(
                f"| {target} | {case} | {r['rps']:,.0f} | {_ms(r['p50_us'])} | {_ms(r['p99_us'])} "
                f"| {_us(r['proxy_cpu_us'])} | {_us(r['upstream_cpu_us'])} | {r['errors']}"
                f" | {r['foreign_cpu_pct']:.0f} % |"
            )
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """gatekeep against the best Python peer and against nginx, per case."""
    out: dict[str, dict[str, Any]] = {}
    gk = results.get("gatekeep", {})
    if "error" in gk:
        return out
    for case, mine in gk.items():
        row: dict[str, Any] = {}
        peers = {p: results[p][case] for p in PYTHON_PEERS if p in results and case in results[p]}
        if peers:
            best_rps = max(peers, key=lambda p: peers[p]["rps"])
            best_p99 = min(peers, key=lambda p: peers[p]["p99_us"])
            row["best_peer_rps"] = best_rps
            row["rps_vs_best_peer"] = mine["rps"] / peers[best_rps]["rps"]
            row["best_peer_p99"] = best_p99
            row["p99_vs_best_peer"] = mine["p99_us"] / peers[best_p99]["p99_us"]
            row["beats_every_peer_on_rps"] = all(mine["rps"] > r["rps"] for r in peers.values())
            row["beats_every_peer_on_p99"] = all(mine["p99_us"] < r["p99_us"] for r in peers.values())
            # CPU per request is the figure that holds up best on a shared machine.
            leanest = min(peers, key=lambda p: peers[p]["proxy_cpu_us"])
            row["leanest_peer"] = leanest
            row["cpu_vs_leanest_peer"] = mine["proxy_cpu_us"] / peers[leanest]["proxy_cpu_us"]
        nginx = results.get("nginx", {}).get(case)
        if nginx:
            row["rps_share_of_nginx"] = mine["rps"] / nginx["rps"]
            row["cpu_vs_nginx"] = mine["proxy_cpu_us"] / nginx["proxy_cpu_us"]
        direct = results.get("direct", {}).get(case)
        if direct:
            row["rps_share_of_direct"] = mine["rps"] / direct["rps"]
        out[case] = row
    return out


def ratio_text(found: dict[str, dict[str, Any]]) -> str:
    lines = []
    for case, row in found.items():
        parts = [f"{case}:"]
        if "rps_vs_best_peer" in row:
            parts.append(
                f"gatekeep ÷ best Python peer ({row['best_peer_rps']})"
                f" = {row['rps_vs_best_peer']:.2f}× req/s;"
                f" p99 gatekeep ÷ best peer p99 ({row['best_peer_p99']}) = {row['p99_vs_best_peer']:.2f};"
                f" beats every peer on req/s: {'yes' if row['beats_every_peer_on_rps'] else 'NO'},"
                f" on p99: {'yes' if row['beats_every_peer_on_p99'] else 'NO'};"
            )
        if "cpu_vs_leanest_peer" in row:
            parts.append(
                f"CPU/request gatekeep ÷ leanest peer ({row['leanest_peer']})"
                f" = {row['cpu_vs_leanest_peer']:.2f};"
            )
        if "rps_share_of_nginx" in row:
            parts.append(
                f"gatekeep ÷ nginx = {row['rps_share_of_nginx']:.0%} of req/s,"
                f" {row['cpu_vs_nginx']:.0f}× its CPU/request;"
            )
        if "rps_share_of_direct" in row:
            parts.append(f"gatekeep ÷ direct = {row['rps_share_of_direct']:.0%}")
        lines.append(" ".join(parts))
    return "\n".join(lines)


def write(section: dict[str, Any]) -> None:
    report: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(RESULTS.read_text())
    report.update(section)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


# --------------------------------------------------------------------- modes


def scripts(workdir: Path) -> dict[str, Path]:
    paths = {}
    for case, text in SCRIPTS.items():
        path = workdir / (case.split()[0].lower() + ".lua")
        path.write_text(text)
        paths[case] = path
    return paths


def start_upstream(fleet: Fleet) -> tuple[int, str]:
    port = free_port()
    python_server(fleet, "upstream", "upstream", port, None)
    return port, f"http://127.0.0.1:{port}"


def start_target(fleet: Fleet, target: str, upstream_port: int, upstream: str) -> tuple[int, int | None]:
    """Start ``target`` in front of the upstream: its port and the pid whose CPU is the proxy's."""
    if target == "direct":
        return upstream_port, None
    if target == "nginx":
        if nginx_binary() is None:
            raise RuntimeError("nginx is not installed")
        port = free_port()
        nginx_server(fleet, port, upstream_port)
        return port, fleet.procs["nginx"].pid
    port = free_port()
    python_server(fleet, target, target, port, upstream)
    return port, fleet.procs[target].pid


def run_table(fleet: Fleet, args: argparse.Namespace) -> None:
    lua = scripts(fleet.workdir)
    upstream_port, upstream = start_upstream(fleet)
    upstream_pid = fleet.procs["upstream"].pid
    check(upstream_port)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n######## round {round_no} of {args.rounds}", flush=True)
        for target in args.targets:
            if "error" in results.get(target, {}):
                continue
            print(f"\n== {target}", flush=True)
            try:
                port, pid = start_target(fleet, target, upstream_port, upstream)
                check(port)
                for case, script in lua.items():
                    url = f"http://127.0.0.1:{port}/item/1"
                    r = measure(url, script, args.duration, args.connections, pid, upstream_pid)
                    runs.setdefault(target, {}).setdefault(case, []).append(r)
                    print(
                        f"   {case:<12} {r['rps']:>9,.0f} req/s  p50 {_ms(r['p50_us'])} ms"
                        f"  p99 {_ms(r['p99_us'])} ms  proxy {_us(r['proxy_cpu_us'])} µs/req"
                        f"  upstream {_us(r['upstream_cpu_us'])} µs/req  errors {r['errors']}"
                        f"  other load {r['foreign_cpu_pct']:.0f} % CPU",
                        flush=True,
                    )
            except RuntimeError as exc:
                print(f"   not available: {exc}", flush=True)
                results[target] = {"error": str(exc)}
            finally:
                if target != "direct":
                    fleet.stop(target)
    for target, cases in runs.items():
        if "error" not in results.get(target, {}):
            # With several rounds, the least disturbed run (most requests/s) stands for the target.
            results[target] = {
                case: dict(max(rs, key=lambda r: r["rps"]), runs=len(rs)) for case, rs in cases.items()
            }
    print("\n" + table(results))
    found = ratios(results)
    if found:
        print("\n" + ratio_text(found))
    write(
        {
            "proxy": {
                "settings": {
                    "duration_s": args.duration,
                    "rounds": args.rounds,
                    "connections": args.connections,
                    "wrk_threads": 1,
                    "warmup_s": 1,
                    "get_body_bytes": GET_SIZE,
                    "post_body_bytes": POST_SIZE,
                    "server": "uvicorn, http=httptools, loop=uvloop, 1 worker, access log off, lifespan on",
                    "nginx": "worker_processes 1, proxy_pass with upstream keepalive 64",
                },
                "machine": machine(),
                "versions": versions(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results": results,
                "ratios": found,
                "units": {
                    "p50_us": "µs",
                    "p99_us": "µs",
                    "proxy_cpu_us": "µs CPU per request",
                    "rps": "requests/s",
                },
            }
        }
    )


def run_memory(fleet: Fleet, args: argparse.Namespace) -> None:
    lua = scripts(fleet.workdir)
    upstream_port, upstream = start_upstream(fleet)
    port = free_port()
    python_server(fleet, "gatekeep", "gatekeep", port, upstream)
    pid = fleet.procs["gatekeep"].pid
    check(port)
    url = f"http://127.0.0.1:{port}/item/1"
    for script in lua.values():
        wrk(url, script, 1, args.connections)
    before = rss_bytes(pid)
    print(
        f"gatekeep RSS after warm-up: {before / 2**20:.1f} MiB; target {args.requests:,} requests", flush=True
    )
    total, samples, runs = 0, [], 0
    deadline = time.monotonic() + args.memory_budget
    cases = list(lua)
    while total < args.requests and time.monotonic() < deadline:
        case = cases[runs % len(cases)]
        r = wrk(url, lua[case], args.memory_chunk, args.connections)
        runs += 1
        total += r["requests"]
        rss = rss_bytes(pid)
        samples.append(
            {"requests": total, "case": case, "rss_mib": round(rss / 2**20, 2), "errors": r["errors"]}
        )
        print(
            f"   {total:>9,} requests ({case}, {r['rps']:,.0f} req/s, {r['errors']} errors):"
            f" RSS {rss / 2**20:.1f} MiB",
            flush=True,
        )
    after = rss_bytes(pid)
    growth = (after - before) / 2**20
    verdict = "within" if growth < 10 else "OVER"
    print(f"\nRSS {before / 2**20:.1f} → {after / 2**20:.1f} MiB over {total:,} requests: "
          f"growth {growth:+.1f} MiB ({verdict} the 10 MiB target)")  # fmt: skip
    write(
        {
            "memory": {
                "requests": total,
                "requested": args.requests,
                "connections": args.connections,
                "rss_before_mib": round(before / 2**20, 2),
                "rss_after_mib": round(after / 2**20, 2),
                "growth_mib": round(growth, 2),
                "target_mib": 10,
                "samples": samples,
                "machine": machine(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        }
    )


def _frame_key(frame: str) -> tuple[str, str]:
    """``func (/full/path/to/file.py:123)`` → (``func (to/file.py)``, its package)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rpartition(":")[0] or where
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})", _package(parts)


def _package(parts: tuple[str, ...]) -> str:
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if len(rest) > 1 else rest[0].split(".")[0]
    if "gatekeep" in parts:
        return "gatekeep"
    if "benchmarks" in parts:
        return "benchmarks"
    return "stdlib " + (
        parts[-2]
        if len(parts) > 1 and parts[-2] not in ("lib", "python3.11")
        else parts[-1].removesuffix(".py")
    )


def pyspy_report(raw: Path, top: int) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _frame_key(f) for f in stack.split(";") if " (" in f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        own[frames[-1][0]] += count
        packages[frames[-1][1]] += count
        for key in {f[0] for f in frames}:
            cumulative[key] += count
    if not total:
        return "py-spy recorded no samples"
    lines = [f"{total} samples of the gatekeep process (py-spy; idle excluded)"]
    lines.append("\nown time by package (uvloop's C event loop shows as its Python caller, asyncio runners):")
    for package, count in packages.most_common():
        lines.append(f"  {count / total:6.1%}  {package}")
    for title, counter in (("own time", own), ("cumulative time", cumulative)):
        lines.append(f"\ntop {top} by {title}:\n  {'own %':>6} {'cum %':>6}  function")
        for key, _ in counter.most_common(top):
            lines.append(f"  {own[key] / total:6.1%} {cumulative[key] / total:6.1%}  {key}")
    return "\n".join(lines)


def run_profile(fleet: Fleet, args: argparse.Namespace) -> None:
    lua = scripts(fleet.workdir)
    case = "POST 64 KiB" if args.profile_case == "post" else "GET 1 KiB"
    upstream_port, upstream = start_upstream(fleet)
    port = free_port()
    url = f"http://127.0.0.1:{port}/item/1"
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    use_pyspy = args.profiler == "py-spy" or (args.profiler == "auto" and os.access(pyspy, os.X_OK))
    if use_pyspy:
        python_server(fleet, "gatekeep", "gatekeep", port, upstream)
        check(port)
        wrk(url, lua[case], 1, args.connections)
        raw = fleet.workdir / "profile.txt"
        fleet.start(
            "py-spy",
            [pyspy, "record", "--pid", str(fleet.procs["gatekeep"].pid),
             "--duration", str(args.profile_seconds),
             "--rate", "500", "--format", "raw", "--full-filenames", "--output", str(raw), "--nonblocking"],
        )  # fmt: skip
        time.sleep(1)  # let py-spy attach
        r = wrk(url, lua[case], args.profile_seconds, args.connections)
        fleet.procs["py-spy"].wait(timeout=args.profile_seconds + 30)
        if not raw.exists():
            raise RuntimeError(f"py-spy wrote nothing:\n{fleet.log_tail('py-spy')}")
        print(f"{case}: {r['rps']:,.0f} req/s while sampled")
        print(pyspy_report(raw, args.top))
        return
    import pstats

    stats_file = fleet.workdir / "gatekeep.prof"
    python_server(fleet, "gatekeep", "gatekeep", port, upstream, "--cprofile", str(stats_file))
    check(port)
    r = wrk(url, lua[case], args.profile_seconds, args.connections)
    fleet.stop("gatekeep")  # SIGTERM: uvicorn returns, the profile is dumped
    print(f"{case}: {r['rps']:,.0f} req/s under cProfile (which slows every Python call)")
    stats = pstats.Stats(str(stats_file))
    stats.strip_dirs()
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--quick", action="store_true", help="3-second runs")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every target this many times, keep the best (default 1)",
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--memory", action="store_true", help="RSS of gatekeep across --requests requests")
    mode.add_argument("--profile", action="store_true", help="profile gatekeep under load")
    parser.add_argument(
        "--requests", type=int, default=200_000, help="requests for --memory (default 200 000)"
    )
    parser.add_argument("--memory-chunk", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-budget", type=float, default=300.0, help="--memory gives up after this many s"
    )
    parser.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--profile-case", choices=("get", "post"), default="get")
    parser.add_argument("--top", type=int, default=30, help="rows per profile table (default 30)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def fleet_scope() -> Iterator[Fleet]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    with tempfile.TemporaryDirectory(prefix="gatekeep-bench-") as workdir:
        fleet = Fleet(Path(workdir))
        try:
            yield fleet
        finally:
            fleet.stop_all()
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    print(f"{os.cpu_count()} CPUs; wrk -t1 -c{args.connections}; everything shares them", flush=True)
    try:
        with fleet_scope() as fleet:
            if args.memory:
                run_memory(fleet, args)
            elif args.profile:
                run_profile(fleet, args)
            else:
                run_table(fleet, args)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted; every process stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
