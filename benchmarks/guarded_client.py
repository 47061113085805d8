"""Requests per second of the guarded client against raw httpx, on the same loopback sandbox.

Every call to a hospital goes through ``GuardedClient`` (SSRF guard, pinned connections, deadline,
size cap, redaction), and the load-test step will send thousands of them; this measures what the
guard costs. Both clients read the same Patients (20 of them, in turn) from one sandbox hospital
served by a separate process, sequentially over one keep-alive connection each, and parse the
JSON; with ``--distinct`` every URL is new (a unique query parameter), the worst case for the
guard's cache of URL checks. After a warm-up,
each round runs both back to back (in alternating order, so neither always goes first), and the
ratio is the median of the rounds' guarded/raw ratios: load from other processes hits both sides
of a pair alike. The requests-per-second figures are each client's median round. The goal is a
ratio of at least 0.9.

Run from the repository root:

    .venv/bin/python -m benchmarks.guarded_client [--requests 500] [--rounds 21] [--distinct]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from connections.http import GuardedClient, OutboundPolicy

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.9
_SERVE = (
    "import sys\n"
    "from connections.sandbox import SandboxHospital\n"
    "hospital = SandboxHospital(flavour='generic', seed=1, patients=20)\n"
    "print(hospital.base_url, *hospital.patient_ids, flush=True)\n"
    "hospital.serve_forever()\n"
)


@contextmanager
def sandbox() -> Iterator[tuple[str, list[str]]]:
    """A sandbox hospital in its own process, so its work does not share our GIL; (base URL, patient ids)."""
    process = subprocess.Popen([sys.executable, "-c", _SERVE], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url, *patient_ids = process.stdout.readline().split()
        yield base_url, patient_ids
    finally:
        process.terminate()
        process.wait(timeout=10)


def rate(call: Callable[[], object], requests: int) -> float:
    """Requests per second of ``requests`` sequential calls."""
    started = time.perf_counter()
    for _ in range(requests):
        call()
    return requests / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Measure both clients, print their rates and the ratio; exit 1 if the ratio misses the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=21, help="measured rounds per client")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests per client first")
    parser.add_argument("--distinct", action="store_true", help="make every URL unique (no repeated URL)")
    args = parser.parse_args(argv)

    with sandbox() as (base_url, patient_ids):
        urls = itertools.cycle([f"{base_url}/Patient/{pid}" for pid in patient_ids])
        serial = itertools.count()
        next_url: Callable[[], str] = (lambda: f"{next(urls)}?n={next(serial)}") if args.distinct else urls.__next__
        raw = httpx.Client(trust_env=False, timeout=httpx.Timeout(5.0, read=15.0))
        guarded = GuardedClient(OutboundPolicy(allowlist=frozenset({httpx.URL(base_url).netloc.decode()})))
        headers = {"Accept": "application/fhir+json", "Accept-Encoding": "gzip, deflate"}
        clients: dict[str, Callable[[], object]] = {
            "raw httpx": lambda: raw.get(next_url(), headers=headers).raise_for_status().json(),
            "guarded": lambda: guarded.get_json(next_url()).json(),
        }
        try:
            for call in clients.values():
                rate(call, args.warmup)
            rounds: dict[str, list[float]] = {name: [] for name in clients}
            for number in range(args.rounds):
                order = list(clients) if number % 2 == 0 else list(reversed(clients))
                for name in order:
                    rounds[name].append(rate(clients[name], args.requests))
        finally:
            raw.close()
            guarded.close()

    medians = {name: statistics.median(values) for name, values in rounds.items()}
    ratio = statistics.median(g / r for g, r in zip(rounds["guarded"], rounds["raw httpx"], strict=True))
    what = f"GET {base_url}/Patient/{{id}}" + ("?n={unique}" if args.distinct else f" ({len(patient_ids)} ids)")
    print(f"{what}: {args.rounds} rounds of {args.requests} requests per client")
    for name, values in rounds.items():
        print(f"  {name:>9}: {medians[name]:8.0f} req/s median  (min {min(values):.0f}, max {max(values):.0f})")
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"  ratio guarded/raw: {ratio:.3f} median of paired rounds ({verdict} the goal of {GOAL})")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
