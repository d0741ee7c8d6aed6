"""The command line: ``python -m lablib run | serve | knobs | doctor | bench``.

Every mistake in the input (an unknown scenario, role or knob, a value out of range, a port
in use) ends with exit status 2 and one line on stderr that names it and the valid choices;
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, NoReturn, Sequence

from .capture import CaptureError, write_pcap
from .knobs import Config, KnobError, markdown_table, parse_assignments

__all__ = ["main"]

PROG = "python -m lablib"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{PROG}: error: {message} (see {PROG} {self._sub_name()}--help)\n")

    def _sub_name(self) -> str:
        parts = self.prog.split()
        return f"{parts[-1]} " if len(parts) > 3 else ""


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .scenarios import names

    parser = _Parser(prog=PROG, description="Close-race labs: HTTP/1.x connection-close races on real sockets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("run", help="run a scenario headless and print outcome counts and kernel counters")
    p.add_argument("scenario", help=f"one of: {', '.join(names())}")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: the scenario's)")
    p.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE",
                   help="change a knob (repeatable); see: knobs SCENARIO")
    p.add_argument("--deadline", type=float, default=None, help="seconds per trial before it counts as timeout")
    p.add_argument("--parallel", type=int, default=None, help="trials side by side (where the scenario allows)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--ladder", metavar="PNG", help="also draw the first trial's ladder timeline into PNG")
    p.add_argument("--capture", action="store_true",
                   help="also capture the packets (needs CAP_NET_RAW; see doctor); drawn on --ladder")
    p.add_argument("--pcap", metavar="FILE", help="with --capture: write the packets to FILE for Wireshark")

    p = sub.add_parser("serve", help="run one role in the foreground on 127.0.0.1 until Ctrl-C")
    p.add_argument("role", help=f"one of: {', '.join(_roles())}")
    p.add_argument("--set", dest="knobs", action="append", default=[], metavar="KNOB=VALUE")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")

    p = sub.add_parser("knobs", help="list the knobs of a scenario or role, with the real options they model")
    p.add_argument("name", nargs="?", help="a scenario or role (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the knob map as a Markdown table")

    p = sub.add_parser("doctor", help="say what this machine allows: capture, counters, tools")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="measure trials per second against bare sockets, and memory")
    p.add_argument("--trials", type=int, default=1000,
                   help="close-basics trials per mode (default 1000); early-close runs a tenth, "
                        "keepalive-reuse and close-framing a fifth as many, upstream-reuse as many requests per row")
    p.add_argument("--json", action="store_true")
    return parser


def _roles() -> dict[str, Any]:
    from .roles.proxy import PROXY_KNOBS
    from .roles.server import SERVER_KNOBS

    return {"server": SERVER_KNOBS, "proxy": PROXY_KNOBS}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": _run, "serve": _serve, "knobs": _knobs, "doctor": _doctor, "bench": _bench}[args.command](args)
    except (KnobError, CaptureError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(exc.strerror or str(exc))


def _run(args: argparse.Namespace) -> int:
    from .runner import run

    if args.pcap and not args.capture:
        raise KnobError("--pcap needs --capture")
    result = run(args.scenario, args.trials, parse_assignments(args.knobs), deadline=args.deadline,
                 parallel=args.parallel, capture=args.capture)
    if args.pcap:
        write_pcap(args.pcap, result.raw_packets)
    if args.ladder:
        result.ladder().savefig(args.ladder, dpi=110)
    if args.json:
        data = result.to_dict()
        if result.packets is not None:
            data["packets"] = len(result.packets)
        print(json.dumps(data))
    else:
        print(result.summary())
        if result.packets is not None:
            print(f"  captured: {len(result.packets)} segments" + (f", written to {args.pcap}" if args.pcap else ""))
        if args.ladder:
            print(f"  ladder of trial 0: {args.ladder}")
    return 1 if result.errors else 0


def _serve(args: argparse.Namespace) -> int:
    from .roles.proxy import HttpProxy
    from .roles.server import HttpServer
    from .topology import Topology
    from .trace import Trace

    roles = _roles()
    if args.role not in roles:
        raise KnobError(f"unknown role {args.role!r}; choose one of {', '.join(roles)}")
    if not 0 <= args.port <= 65535:
        raise KnobError(f"--port {args.port}: must be between 0 and 65535 (0: any free port)")
    config = Config(roles[args.role], parse_assignments(args.knobs), owner=f"role {args.role}")
    if args.role == "proxy" and not config["proxy.upstream"]:
        raise KnobError("proxy.upstream is not set: say where to send requests, "
                        "for example --set proxy.upstream=127.0.0.1:8080")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C must stop it even when started from a shell that set SIGINT to "ignore"
    # (background jobs of a script inherit that, and Python then installs no handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Topology(Trace(keep=10_000)) as topo:
        role = HttpServer(topo.trace, config, port=args.port) if args.role == "server" else HttpProxy(
            topo.trace, config, port=args.port, access_log=lambda line: print(line, flush=True))
        server = topo.start_now(role, args.role)
        host, port = server.address
        settings = ", ".join(f"{k}={v}" for k, v in config.formatted().items())
        print(f"{args.role} listening on http://{host}:{port}/ ({settings})", flush=True)
        print("Ctrl-C stops it.", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    print(f"{args.role} stopped after {server.requests} requests.", flush=True)
    return 0


def _knobs(args: argparse.Namespace) -> int:
    from .scenarios import all_scenarios, get

    roles = _roles()
    if args.name is None:
        groups = [(s.name, s.knobs) for s in all_scenarios()] + [(f"serve {r}", k) for r, k in roles.items()]
    elif args.name in roles:
        groups = [(f"serve {args.name}", roles[args.name])]
    else:
        sc = get(args.name)
        groups = [(sc.name, sc.knobs)]
    if args.markdown:
        print(markdown_table(groups))
        return 0
    for title, knobs in groups:
        print(title)
        for k in knobs:
            kind = "|".join(k.choices) if k.kind == "choice" else k.kind
            print(f"  {k.name} = {k.format(k.default)}  ({kind}) {k.help}")
            if k.models:
                print(f"      models: {k.models}" + (f"; real default: {k.real_default}" if k.real_default else ""))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, format_report

    report = diagnose()
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import (
        bench_close_basics,
        bench_close_framing,
        bench_early_close,
        bench_keepalive_reuse,
        bench_upstream_reuse,
        format_bench,
        format_close_framing,
        format_early_close,
        format_keepalive_reuse,
        format_upstream_reuse,
    )

    if not 10 <= args.trials <= 100_000:
        raise KnobError(f"--trials {args.trials}: must be between 10 and 100000")
    close_basics = bench_close_basics(args.trials)
    early_close = bench_early_close(max(10, args.trials // 10))
    keepalive = bench_keepalive_reuse(max(10, args.trials // 5))
    framing = bench_close_framing(max(10, args.trials // 5))
    upstream = bench_upstream_reuse(max(10, args.trials))
    if args.json:
        print(json.dumps({"close-basics": close_basics, "early-close": early_close, "keepalive-reuse": keepalive,
                          "close-framing": framing, "upstream-reuse": upstream}))
    else:
        print(format_bench(close_basics))
        print(format_early_close(early_close))
        print(format_keepalive_reuse(keepalive))
        print(format_close_framing(framing))
        print(format_upstream_reuse(upstream))
    return 0
