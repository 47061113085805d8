"""`manage.py sandbox`: run one sandbox hospital in the foreground.

The demo starts one of these per vendor, and an engineer can start one by hand to poke at a
flavour with curl. All the work is in `connections.sandbox`; this only turns arguments into a
`SandboxHospital` and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import textwrap
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.sandbox import FAULT_SPECS, FLAVOURS, SandboxHospital
from connections.sandbox.server import AUTH_MODES, QUIRK_SPECS


def _switch_list() -> str:
    """Every fault and quirk --fault can switch on, with what it does and its default."""
    lines = ["faults and quirks for --fault NAME=VALUE (VALUE is JSON; a bare word is a string):"]
    for name, spec in FAULT_SPECS.items():
        head = f"  {name}={json.dumps(spec.default)}"
        lines.append(head)
        lines.extend(textwrap.wrap(spec.doc, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def parse_switch(text: str) -> tuple[str, Any]:
    """One --fault argument: NAME=VALUE with a JSON value, or a bare word taken as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise CommandError(f"--fault takes NAME=VALUE, got {text!r}.")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


class Command(BaseCommand):
    help = "Serve a simulated hospital FHIR R4 server (a sandbox hospital) until interrupted."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # The switch list is laid out by hand, so argparse must keep its line breaks.
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("epilog", _switch_list())
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--flavour", choices=sorted(FLAVOURS), default="generic", help="The EHR vendor to play.")
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8101, help="Port to bind (0 picks a free one).")
        parser.add_argument("--seed", type=int, default=1, help="Seed of the synthetic population.")
        parser.add_argument("--patients", type=int, default=50, help="How many synthetic patients to serve.")
        parser.add_argument("--auth", choices=AUTH_MODES, default="none", help="How clients must authenticate.")
        parser.add_argument("--client-id", default="demo-client", help="Client id (basic and client_credentials).")
        parser.add_argument("--client-secret", default="demo-secret", help="Client secret (basic, client_credentials).")
        parser.add_argument("--latency-ms", type=int, default=0, help="Fault: delay every FHIR answer by N ms.")
        parser.add_argument("--rate-429", type=float, default=0.0, help="Fault: share of requests answered 429.")
        parser.add_argument("--rate-5xx", type=float, default=0.0, help="Fault: share of requests answered 503.")
        capacity = parser.add_argument_group(
            "capacity knobs (for load tests)",
            "Also settable while running, with every fault, by PUT /_sandbox/faults and a JSON object of "
            "names below (latency_ms, latency_median_ms, latency_sigma, max_concurrency, throttle_every, "
            "throttle_rps, throttle_burst, retry_after); GET /_sandbox/info shows the queue and 429 counts.",
        )
        capacity.add_argument(
            "--latency-median-ms", type=int, default=0, help="Add a seeded lognormal latency with this median (ms)."
        )
        capacity.add_argument(
            "--latency-sigma", type=float, default=0.5, help="That lognormal's sigma (0 = fixed, 1 = p99 near 10x)."
        )
        capacity.add_argument(
            "--max-concurrency",
            type=int,
            default=0,
            help="Serve at most N FHIR requests at once; the rest queue in arrival order (0 = no limit).",
        )
        capacity.add_argument("--throttle-every", type=int, default=0, help="Answer every Nth FHIR request 429.")
        capacity.add_argument(
            "--throttle-rps", type=float, default=0.0, help="Token bucket: let N FHIR requests a second through."
        )
        capacity.add_argument("--throttle-burst", type=int, default=10, help="The token bucket's size.")
        capacity.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with every 429.")
        capacity.add_argument(
            "--request-log",
            type=int,
            default=0,
            help="Keep the last N FHIR requests' arrival and answer times (GET /_sandbox/requests).",
        )
        parser.add_argument(
            "--fault",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"Switch on any fault or quirk (repeatable), e.g. --fault never_pages=true; the quirks are "
            f"{', '.join(QUIRK_SPECS)}. The full list is below.",
        )
        parser.add_argument(
            "--defects",
            choices=["none", "default", "showcase"],
            default="none",
            help="Plant the flavour's data-quality defects (missing birth dates, local lab codes, duplicates...) at "
            "its rates; showcase first plants each kind once on the first patients (the demo's), so a small sample "
            "shows them all.",
        )
        parser.add_argument(
            "--extended-clinical",
            action="store_true",
            help="Also serve MedicationRequest, AllergyIntolerance, Procedure and Immunization.",
        )
        parser.add_argument("--log-requests", action="store_true", help="Log every request to stderr.")

    def handle(self, *args: Any, **options: Any) -> None:
        # Only faults that were asked for, so the rest keep their defaults.
        knobs = ("latency_ms", "rate_429", "rate_5xx", "latency_median_ms", "max_concurrency", "throttle_every")
        faults = {key: options[key] for key in (*knobs, "throttle_rps") if options[key]}
        for key, default in (("latency_sigma", 0.5), ("throttle_burst", 10), ("retry_after", 1)):
            if options[key] != default:
                faults[key] = options[key]
        faults.update(parse_switch(text) for text in options["fault"])
        try:
            hospital = SandboxHospital(
                flavour=options["flavour"],
                seed=options["seed"],
                patients=options["patients"],
                host=options["host"],
                port=options["port"],
                auth=options["auth"],
                client_id=options["client_id"],
                client_secret=options["client_secret"],
                faults=faults,
                log_requests=options["log_requests"],
                defects=None if options["defects"] == "none" else options["defects"],
                extended_clinical=options["extended_clinical"],
                request_log=options["request_log"],
            )
        except (ValueError, OSError) as exc:
            raise CommandError(f"Cannot start the sandbox: {exc}") from exc
        self.stdout.write(f"sandbox {hospital.flavour} listening at {hospital.base_url}")
        self.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a foreground server stops
            hospital.serve_forever()
