"""Our load engine beside wrk and Locust's FastHttpUser, against the same loopback target, in one run.

The load-test step must measure a hospital's endpoint as accurately as a dedicated tool, so its
engine (``connections.loadgen``) is compared with two: wrk (C, the usual yardstick; Debian's
``wrk`` package) and Locust's ``FastHttpUser`` (Python, headless; the pip package). Each tool
runs as its own child process and is measured the same way, from outside:

- **requests per second** are counted by the target itself (the server's own request counter,
  read at the start and the end of a measured window after a warm-up), not taken from the tools;
- **client CPU per request** is the child process's CPU time (user + system, psutil) over the
  same window, divided by the requests the target counted in it.

Two figures, with their goals:

1. **Saturation at 50 connections**: each tool as fast as it can over 50 keep-alive connections
   (wrk with one thread, so every tool has one core; Locust with 50 users and no wait; ours in
   its open model with a target rate far above what it can send, counting the rest as dropped).
   The target is nginx from Debian when installed (one worker process, a fixed 1 KB JSON body),
   otherwise a small uvloop server in this file; the output says which. Goals: ours at least 20%
   of wrk's rate and at least 3x Locust's. Each round runs every tool once, in rotating order;
   the rates are medians of the rounds, and the ratios the medians of each round's own ratio.
2. **Fixed rate with 20 ms latency**: the target (the uvloop server here, which answers every
   request 20 ms after it arrives) is loaded by wrk with 50 connections. Debian's wrk has no
   ``-R`` (that is wrk2), so it is a closed loop whose rate settles where 50 connections carry
   it; our engine then runs its open model *at the rate wrk achieved*, and the two achieved rates
   and p50 latencies are compared (goal: both within 5%). Locust with 50 users is shown beside
   them for reference. wrk measures latency from the actual send, ours from the intended one; at
   a rate the target keeps up with, those agree, which is the point of the comparison.

Run from the repository root (wrk: ``apt-get install wrk``; nginx optional):

    .venv/bin/python -m benchmarks.loadgen [--duration 8] [--warmup 2] [--rounds 3] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PATH = "/fhir/Patient/example"
# A Patient about as large as the sandbox's, so every tool reads a realistic body.
BODY = json.dumps(
    {
        "resourceType": "Patient",
        "id": "example",
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "identifier": [{"system": "urn:oid:1.2.840.114350.1.13.0", "value": f"E{n:07d}"} for n in range(8)],
        "name": [{"use": "official", "family": "Example", "given": ["Pat", "Q"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [{"line": ["1 Main Street"], "city": "Springfield", "state": "MA", "postalCode": "01101"}] * 3,
        "telecom": [{"system": "phone", "value": "555-0100", "use": "home"}] * 3,
    },
    separators=(",", ":"),
).encode()
SATURATION_GOALS = {"wrk": 0.20, "locust": 3.0}
FIXED_RATE_TOLERANCE = 0.05


# --------------------------------------------------------------------------------------------
# Targets


def _response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class _TinyServer(asyncio.Protocol):
    """A keep-alive HTTP/1.1 server that answers every GET with one fixed body, after an optional delay."""

    count = 0
    latency = 0.0
    answer = _response(BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            if head.startswith(b"GET /__count"):
                self.transport.write(_response(str(_TinyServer.count).encode()))
                continue
            _TinyServer.count += 1
            if _TinyServer.latency:
                asyncio.get_running_loop().call_later(_TinyServer.latency, self._answer)
            else:
                self.transport.write(_TinyServer.answer)
        self.buffer = buffer

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(_TinyServer.answer)


def serve(port: int, latency_ms: float) -> None:
    """Run the tiny server in this process until killed (the child side of ``tiny_server``)."""
    import uvloop

    async def main() -> None:
        _TinyServer.latency = latency_ms / 1000
        server = await asyncio.get_running_loop().create_server(_TinyServer, "127.0.0.1", port, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(main())


@dataclass
class Target:
    name: str
    port: int
    count: Callable[[], int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


@contextmanager
def tiny_server(latency_ms: float = 0.0) -> Iterator[Target]:
    """The uvloop server in a child process of its own (so it never shares our GIL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.loadgen", "serve", "--latency-ms", str(latency_ms)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())

        def count() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/__count", timeout=5) as answer:
                return int(answer.read())

        label = "uvloop server in this file" + (f" ({latency_ms:g} ms latency)" if latency_ms else "")
        yield Target(label, port, count)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def nginx_server() -> Iterator[Target]:
    """Debian's nginx, one worker, answering the same body; requests counted by stub_status."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="loadgen-nginx-") as prefix:
        body = BODY.decode().replace("\\", "\\\\").replace("'", "\\'")
        temp = {name: f"{prefix}/{name}" for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        config = f"""
daemon off; master_process off; worker_processes 1;
error_log {prefix}/error.log warn; pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 100000000; keepalive_timeout 120s;
  client_body_temp_path {temp["body"]}; proxy_temp_path {temp["proxy"]}; fastcgi_temp_path {temp["fastcgi"]};
  uwsgi_temp_path {temp["uwsgi"]}; scgi_temp_path {temp["scgi"]};
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location = /nginx_status {{ stub_status; }}
    location / {{ default_type application/fhir+json; return 200 '{body}'; }}
  }}
}}
"""
        Path(prefix, "nginx.conf").write_text(config)
        process = subprocess.Popen([binary, "-p", prefix, "-c", f"{prefix}/nginx.conf"], stderr=subprocess.PIPE)
        try:
            status_url = f"http://127.0.0.1:{port}/nginx_status"
            for _ in range(100):
                try:
                    urllib.request.urlopen(status_url, timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None:
                        error = process.stderr.read().decode() if process.stderr else ""
                        raise RuntimeError(f"nginx did not start: {error}") from None
                    time.sleep(0.05)

            def count() -> int:
                with urllib.request.urlopen(status_url, timeout=5) as answer:
                    # "server accepts handled requests\n a b c": c counts this status request too.
                    return int(answer.read().split()[9]) - 1

            yield Target(f"nginx {_nginx_version(binary)} (1 worker)", port, count)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\S+)", out)
    return match.group(1) if match else "?"


# --------------------------------------------------------------------------------------------
# Generators


@dataclass
class Measured:
    rps: float  # counted by the target over the window
    cpu_us: float  # client CPU per request over the window
    p50_ms: float | None  # the tool's own report, whole run
    note: str = ""


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def measure(command: list[str], target: Target, warmup: float, window: float) -> tuple[Measured, str]:
    """Run one generator as a child process; count the window by the target and psutil."""
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process = psutil.Process(child.pid)
        time.sleep(warmup)
        count0, cpu0, t0 = target.count(), _cpu(process), time.perf_counter()
        time.sleep(window)
        count1, cpu1, t1 = target.count(), _cpu(process), time.perf_counter()
        out, err = child.communicate(timeout=window + warmup + 60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({child.returncode}): {err.strip()[-2000:]}")
    requests = count1 - count0
    measured = Measured(
        rps=requests / (t1 - t0),
        cpu_us=(cpu1 - cpu0) / requests * 1e6 if requests else float("nan"),
        p50_ms=None,
    )
    return measured, out


def wrk_command(target: Target, connections: int, seconds: float) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", target.url]


def parse_wrk_p50(output: str) -> float | None:
    match = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if not match:
        return None
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Reader(FastHttpUser):
    wait_time = constant(0)

    @task
    def read(self):
        self.client.get({path!r})
"""


def locust_command(target: Target, users: int, seconds: float, workdir: str) -> list[str]:
    locustfile = Path(workdir, "locustfile.py")
    locustfile.write_text(LOCUSTFILE.format(path=PATH))
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(users), "-r", str(users),
        "-t", f"{seconds:.0f}s", "-H", f"http://127.0.0.1:{target.port}", "--only-summary",
        "--loglevel", "ERROR", "--csv", str(Path(workdir, "run")),
    ]  # fmt: skip


def parse_locust_p50(workdir: str) -> float | None:
    with open(Path(workdir, "run_stats.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated" and row.get("50%"):
                return float(row["50%"])
    return None


def ours_command(target: Target, connections: int, seconds: float, rate: float | None) -> list[str]:
    command = [
        sys.executable, "-m", "benchmarks.loadgen", "ours", "--port", str(target.port),
        "--connections", str(connections), "--duration", f"{seconds:.0f}",
    ]  # fmt: skip
    if rate is not None:
        command += ["--rate", f"{rate:.1f}"]
    return command


def run_ours(port: int, connections: int, duration: int, rate: float | None, closed: bool) -> None:
    """The child side of ``ours_command``: one run of our engine, its summary as JSON on stdout."""
    from connections.loadgen import (
        PATIENT_READ,
        Caps,
        LoadPlan,
        PinnedTarget,
        RecordPool,
        run,
        run_closed,
        standard_mix,
    )

    target = PinnedTarget(
        address="127.0.0.1",
        port=port,
        host_header=f"127.0.0.1:{port}",
        scheme="http",
        base_path="/fhir",
        headers=(("Accept", "application/fhir+json"), ("User-Agent", "onboarding-portal/0.1")),
    )
    mix = standard_mix({PATIENT_READ: 1}, RecordPool(patient_ids=("example",)))
    caps = Caps(max_rate=1e7, max_concurrency=1000, max_duration_s=3600, max_total_requests=10**9)
    if closed:
        result = run_closed(target, mix, caps, users=connections, duration_s=duration)
    else:
        # Saturation: a target rate far above what one core can send, the rest counted as dropped.
        plan = LoadPlan(mix=mix, rate=rate or 1e6, duration_s=duration, concurrency=connections)
        result = run(target, plan, caps)
    print(
        json.dumps(
            {
                "outcome": result.outcome.value,
                "achieved_rps": result.achieved_rps,
                "answered": result.answered,
                "dropped": result.dropped,
                "dropped_by_reason": result.dropped_by_reason,
                "p50_ms": result.latency.p50_ms,
                "p99_ms": result.latency.p99_ms,
                "errors": result.errors,
                "connections": result.connections_opened,
                "send_lag_p50_ms": result.send_lag.p50_ms,
            }
        )
    )


# --------------------------------------------------------------------------------------------
# The report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def saturation(target: Target, args: argparse.Namespace, have_wrk: bool) -> dict[str, list[Measured]]:
    seconds = args.warmup + args.duration + 2
    rows: dict[str, list[Measured]] = {"ours (open model)": [], "ours (closed loop)": [], "locust": []}
    if have_wrk:
        rows["wrk"] = []
    names = list(rows)
    with tempfile.TemporaryDirectory(prefix="loadgen-locust-") as workdir:
        for number in range(args.rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                if name == "wrk":
                    command = wrk_command(target, args.connections, seconds)
                elif name == "locust":
                    command = locust_command(target, args.connections, seconds, workdir)
                else:
                    command = ours_command(target, args.connections, seconds, None)
                    if "closed" in name:
                        command.append("--closed")
                figures, _ = measure(command, target, args.warmup, args.duration)
                rows[name].append(figures)
                print(f"  round {number + 1} {name:>18}: {figures.rps:9.0f} req/s  {figures.cpu_us:7.1f} µs CPU/req")
    return rows


def fixed_rate(args: argparse.Namespace, have_wrk: bool) -> dict[str, Measured]:
    seconds = args.warmup + args.duration + 2
    rows: dict[str, Measured] = {}
    with tiny_server(args.latency_ms) as target, tempfile.TemporaryDirectory(prefix="loadgen-locust-") as workdir:
        print(f"fixed rate: {target.name}, {args.connections} connections")
        rate: float | None = None
        if have_wrk:
            figures, out = measure(wrk_command(target, args.connections, seconds), target, args.warmup, args.duration)
            figures.p50_ms = parse_wrk_p50(out)
            rows["wrk"] = figures
            rate = figures.rps
        else:
            rate = args.connections / (args.latency_ms / 1000) * 0.9
        # An open model needs headroom in its pool: at wrk's rate 50 connections are all but
        # always busy, so any stall (of the target, or of this shared machine) would leave a due
        # request without one. The pool is a cap; the engine opens only what the rate needs.
        pool = 4 * args.connections
        command = ours_command(target, pool, seconds, rate)
        figures, out = measure(command, target, args.warmup, args.duration)
        summary = json.loads(out)
        figures.p50_ms = summary["p50_ms"]
        figures.note = (
            f"open model at {rate:.0f} req/s, pool cap {pool}, "
            f"{summary['connections']} opened, {summary['dropped']} dropped"
        )
        rows["ours (open model)"] = figures
        command = locust_command(target, args.connections, seconds, workdir)
        figures, _ = measure(command, target, args.warmup, args.duration)
        figures.p50_ms = parse_locust_p50(workdir)
        rows["locust"] = figures
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it; exit 1 if a goal is missed (or wrk is missing)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) run the tiny target server")
    serve_parser.add_argument("--port", type=int, default=0)
    serve_parser.add_argument("--latency-ms", type=float, default=0.0)
    ours_parser = sub.add_parser("ours", help="(internal) one run of our engine, JSON summary on stdout")
    ours_parser.add_argument("--port", type=int, required=True)
    ours_parser.add_argument("--connections", type=int, default=50)
    ours_parser.add_argument("--duration", type=int, default=10)
    ours_parser.add_argument("--rate", type=float, default=None)
    ours_parser.add_argument("--closed", action="store_true")
    parser.add_argument("--duration", type=float, default=8, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="saturation rounds (medians are reported)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20, help="the fixed-rate target's added latency")
    parser.add_argument("--server", choices=["auto", "nginx", "python"], default="auto", help="saturation target")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.latency_ms)
        return 0
    if args.command == "ours":
        run_ours(args.port, args.connections, args.duration, args.rate, args.closed)
        return 0

    have_wrk = shutil.which("wrk") is not None
    if not have_wrk:
        print("wrk is NOT INSTALLED (apt-get install wrk): its rows and the ratios to it are left out.")
    has_nginx = bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))
    use_nginx = args.server == "nginx" or (args.server == "auto" and has_nginx)
    print(f"{os.cpu_count()} CPUs; each generator is a child process; rates are counted by the target.")
    with nginx_server() if use_nginx else tiny_server() as target:
        print(f"saturation: {target.name} on loopback, {args.connections} connections, GET {PATH} ({len(BODY)} B body)")
        rounds = saturation(target, args, have_wrk)
    fixed = fixed_rate(args, have_wrk)

    sat = {name: (_median([m.rps for m in ms]), _median([m.cpu_us for m in ms])) for name, ms in rounds.items()}
    ours_rps = sat["ours (open model)"][0]
    print()
    print(f"Saturation at {args.connections} connections ({target.name}; medians of {args.rounds} rounds)")
    print(f"  {'generator':<20} {'req/s':>10} {'CPU/req':>10}")
    for name, (rps, cpu_us) in sat.items():
        print(f"  {name:<20} {rps:10.0f} {cpu_us:8.1f} µs")
    ok = True
    for name, goal in SATURATION_GOALS.items():
        if name not in sat:
            print(f"  ours/{name}: not measured ({name} missing)")
            ok = False
            continue
        # Other load on the machine moves every tool's rate between rounds; within a round the
        # tools run back to back, so the median of the rounds' own ratios is the steadier figure.
        paired = _median([o.rps / t.rps for o, t in zip(rounds["ours (open model)"], rounds[name], strict=True)])
        meets = paired >= goal
        ok = ok and meets
        print(
            f"  ours/{name}: {paired:.2f}x median of paired rounds, {ours_rps / sat[name][0]:.2f}x of the medians "
            f"({'meets' if meets else 'misses'} the goal of >= {goal:g}x)"
        )

    print()
    print(f"Fixed rate, {args.latency_ms:g} ms latency, {args.connections} connections")
    print(f"  {'generator':<20} {'req/s':>10} {'p50':>10} {'CPU/req':>10}")
    for name, m in fixed.items():
        p50 = f"{m.p50_ms:8.2f} ms" if m.p50_ms is not None else "       n/a"
        print(f"  {name:<20} {m.rps:10.0f} {p50} {m.cpu_us:8.1f} µs  {m.note}")
    if "wrk" in fixed:
        wrk, ours = fixed["wrk"], fixed["ours (open model)"]
        rate_ratio = ours.rps / wrk.rps
        p50_ratio = (ours.p50_ms or 0) / (wrk.p50_ms or float("nan"))
        for label, ratio in (("achieved rate", rate_ratio), ("p50", p50_ratio)):
            meets = abs(ratio - 1) <= FIXED_RATE_TOLERANCE
            ok = ok and meets
            verdict = "meets" if meets else "misses"
            print(f"  ours/wrk {label}: {ratio:.3f} ({verdict} the goal of within {FIXED_RATE_TOLERANCE:.0%})")
        print("  (Debian's wrk has no -R: it is a closed loop at a fixed connection count, and ours runs its")
        print("   open model at the rate wrk achieved; wrk times from the actual send, ours from the intended one)")
    else:
        ok = False
    return 0 if ok and have_wrk else 1


if __name__ == "__main__":
    sys.exit(main())
