"""``python -m benchmarks NAME [options]``: run one of gatekeep's benchmarks.

Each benchmark is its own module, imported only when asked for, so one that
is missing (or whose code has not landed yet) does not stop the others.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

BENCHMARKS = {
    "proxy": ("benchmarks.proxy", "gatekeep against the Python peers and nginx, via wrk"),
    "router": ("benchmarks.router", "route match cost, 10 → 10 000 routes"),
    "ratelimit": ("benchmarks.ratelimit", "rate limiter decisions, memory and Redis"),
    "upstream": ("benchmarks.upstream_pool", "the upstream connection pool"),
    "jwt": ("benchmarks.jwt", "JWT verifications per second, cold vs cached"),
    "resilience": ("benchmarks.resilience", "balancers, breakers, health, UpstreamGuard.call, µs/op"),
    "prometheus": ("benchmarks.prometheus", "the prometheus filter's on_log, all flags vs the counter"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<10} {text}" for name, (_, text) in BENCHMARKS.items())
    head = "usage: python -m benchmarks NAME [options]"
    return f"{head}\n\n{rows}\n\n'python -m benchmarks NAME --help' for options"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage())
        return 0 if len(sys.argv) >= 2 else 2
    name = sys.argv[1]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = BENCHMARKS[name][0]
    if importlib.util.find_spec(module) is None:
        print(f"{name}: not available ({module} is not in this checkout)", file=sys.stderr)
        return 1
    sys.argv = [f"python -m benchmarks {name}", *sys.argv[2:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except ImportError as exc:
        print(f"{name}: not available ({exc})", file=sys.stderr)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
