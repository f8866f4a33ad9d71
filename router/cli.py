"""edge-router command line: serve | validate | demo | chaos run. Thin: parse, then call the app."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .config.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-router", description="Multi-cluster latency-aware edge router")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the router")
    s.add_argument("--config", required=True, action="append", help="config file or directory (repeatable)")
    s.add_argument("--listen", help="HOST:PORT for traffic (overrides the Router document)")
    s.add_argument("--admin", help="HOST:PORT for the admin server")
    s.add_argument("--workers", type=worker_count, default=1,
                   help="worker processes sharing the port: a number, or 'auto' for one per usable CPU")
    s.add_argument("--log-level", default="info")
    s.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by --workers
    s.add_argument("--debug-socket", help=argparse.SUPPRESS)  # a worker's read-only admin endpoints
    # the tables workers share (rate-limit buckets, connections per client, requests in flight, ejections),
    # and the worker's own region in the last three
    s.add_argument("--shared-fds", type=_fds, help=argparse.SUPPRESS)
    s.add_argument("--worker-slot", type=int, default=0, help=argparse.SUPPRESS)
    v = sub.add_parser("validate", help="check config files; exit 2 on errors")
    v.add_argument("paths", nargs="+")
    d = sub.add_parser("demo", help="the local multi-region lab behind the seed split, with a live view and a report")
    d.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    d.add_argument("--report", default="demo-report.html", help="HTML report path (default demo-report.html)")
    d.add_argument("--config", default=None, help="TrafficSplit file (default: the seed in config/)")
    d.add_argument("--no-live", action="store_true", help="no live view (a line every 5 s instead)")
    c = sub.add_parser("chaos", help="failover drills against the local lab or a Kubernetes deployment")
    csub = c.add_subparsers(dest="chaos_command", required=True)
    cr = csub.add_parser("run", help="run a drill file")
    cr.add_argument("drill", help="drill YAML, e.g. chaos/drills/region-blackhole.yaml")
    cr.add_argument("--target", choices=("lab", "kubernetes"), default="lab")
    cr.add_argument("--short", action="store_true", help="the short form (durations scaled down, as CI runs it)")
    cr.add_argument("--out", help="report directory (default drill-reports/NAME)")
    cr.add_argument("--admin", help="with --target kubernetes: the router admin URL (default http://127.0.0.1:9901)")
    cr.add_argument("--url", help="with --target kubernetes: the router's traffic URL (default http://127.0.0.1:8080)")
    cr.add_argument("--config", action="append", help="with --target kubernetes: the router's config (repeatable)")
    cl = csub.add_parser("lab", help="run the local lab on its own, for a router you start yourself")
    cl.add_argument("--lab", help="lab file (default chaos/lab/default.yaml)")
    cl.add_argument("--config-out", default="lab-config", help="where to write the router config (default lab-config/)")
    args = parser.parse_args(argv)

    if args.command == "validate":
        return validate(args.paths)
    logging.basicConfig(level=getattr(args, "log_level", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args)
    if args.command == "chaos" and args.chaos_command == "lab":
        import uvloop
        from chaos.lab.standalone import run_lab
        return uvloop.run(run_lab(args.lab, args.config_out))
    if args.command == "chaos":
        import uvloop
        from chaos.runner import run as run_drill
        return uvloop.run(run_drill(args.drill, args.target, args.short, args.out, admin=args.admin,
                                       url=args.url, config=args.config))
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(args.duration, args.report, args.config, live=not args.no_live)
    return 2


def _fds(v: str) -> tuple[int, ...]:
    """--shared-fds A,B,C,D,E,F: the six tables' descriptors (from the supervisor)."""
    fds = tuple(int(x) for x in v.split(","))
    if len(fds) != 6:
        raise argparse.ArgumentTypeError("expected six descriptors")
    return fds


def worker_count(text: str) -> int:
    """`--workers N` (1..1024) or `--workers auto`: one per CPU this process may run on (its affinity mask,
    which is what a container's cpuset or taskset leaves it), like nginx's `worker_processes auto`."""
    if text == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', got {text!r}") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1024, got {n}")
    return n


def validate(paths: list[str]) -> int:
    from .config.loader import load_config
    try:
        config = load_config(*paths)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"ok: {len(config.files)} file(s), {len(config.clusters)} cluster(s), {len(config.splits)} split(s)")
    return 0


def serve(args) -> int:
    from .openfiles import raise_open_files_limit
    from .obs.admin import AdminError
    raise_open_files_limit()  # before workers start: they inherit it
    try:
        if args.worker:
            import uvloop
            from .workers import run_worker
            return uvloop.run(run_worker(args.config, args.listen, args.debug_socket, args.shared_fds,
                                         args.worker_slot))
        if args.workers > 1:
            from .workers import run_workers
            return run_workers(args.config, args.listen, args.admin, args.workers)
        import uvloop
        from .app import run
        return uvloop.run(run(args.config, args.listen, args.admin))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except (AdminError, OSError) as exc:
        print(f"edge-router: {exc}", file=sys.stderr)
        return 1
