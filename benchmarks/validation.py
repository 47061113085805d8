"""The validate step, measured side by side on the same 1,000-patient sandbox data.

Three comparisons, in one run:

1. **Our validation against fhir.resources**, in resources per second, on the same resources as
   JSON bytes: ours is ``json.loads`` plus every check of the validate step (structure against
   fhirclient's models, US Core, codes after the mapping, references, patients, dates); theirs is
   ``model_validate_json`` of fhir.resources' R4B models (parse + validate). Goal: ours >= 2x.
2. **The validate step's wall time against just downloading** the same resources with the same
   client (the adapter's raw methods over the guarded client), one patient at a time, as the step
   does. Goal: at most 1.3x.
3. **Peak memory of the validate step at 100 against 1,000 patients**, each in a fresh process:
   the tracemalloc peak during the step (what the step itself holds) and the process's peak RSS.
   Goal: at most 1.3x (it streams; it never holds every patient's resources).
4. **The latency pass**: the validate step against a sandbox that takes 100 ms over every request,
   1,000 patients, pulled sequentially, concurrently (4 and 8 requests at once, the connection's
   agreed limit) and through the FHIR Bulk Data export. Each wall time is printed beside its floor,
   (requests x 100 ms) / concurrency, with the requests counted by the sandbox. Goals: each concurrent
   pull at most 1.3x its floor; the bulk pull under 60 s; the tracemalloc peak at 1,000 patients at
   most 1.3x that at 100, for each method. Each run is a fresh process.

The sandbox hospital (generic flavour, every clinical type, its default planted defects) runs in
a process of its own. The portal runs on a scratch PostgreSQL database, as in production
(``portal_validation_bench`` on 127.0.0.1, dropped and created at the start), or on the database
named by BENCH_DATABASE_URL, which must be a scratch database: it is migrated. SQLite works
(``sqlite:////tmp/bench.sqlite3``) but skews the memory pass: Python's sqlite3 keeps up to 128
prepared statements per connection, and batch inserts of differing sizes fill that cache, about
0.4 MiB more at 1,000 patients than at 100 (bounded, but it reads as growth).

Run from the repository root:

    .venv/bin/python -m benchmarks.validation [--patients 1000] [--rounds 3] [--passes speed,wall,memory,latency]
        [--latency-methods sequential,concurrent4,concurrent8,bulk] [--latency-ms 100]

The sequential latency pass alone takes over 13 minutes at 1,000 patients (8,000 requests x 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"speed": 2.0, "wall": 1.3, "memory": 1.3, "floor": 1.3, "bulk_s": 60.0}
PASSES = ("speed", "wall", "memory", "latency")
# Pull method -> (the connection's pull_method, its agreed concurrency).
METHODS = {"sequential": ("rest", 1), "concurrent4": ("rest", 4), "concurrent8": ("rest", 8), "bulk": ("bulk", 1)}
_SERVE = (
    "import sys\n"
    "from connections.sandbox import SandboxHospital\n"
    "hospital = SandboxHospital(flavour='generic', seed=1, patients=int(sys.argv[1]), defects='default',"
    " extended_clinical=True, faults={'latency_ms': int(sys.argv[2]) if len(sys.argv) > 2 else 0})\n"
    "print(hospital.base_url, flush=True)\n"
    "hospital.serve_forever()\n"
)


@contextmanager
def sandbox(patients: int, latency_ms: int = 0) -> Iterator[str]:
    """A sandbox hospital in its own process (its work must not share our GIL or our memory)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(patients), str(latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


def setup_django(var_dir: str, port: int) -> None:
    """Settings for a scratch portal that may reach the sandbox, then django.setup() and migrate."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ["PORTAL_VAR_DIR"] = var_dir
    os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["OUTBOUND_ALLOWLIST"] = f"127.0.0.1:{port}"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["DJANGO_DEBUG"] = "false"  # as in production: no SQL log growing with the run
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


SCRATCH_DATABASE = "postgres://postgres@127.0.0.1:5432/portal_validation_bench"


def scratch_database() -> None:
    """Create the scratch PostgreSQL database (unless BENCH_DATABASE_URL names one); children inherit it."""
    if os.environ.get("BENCH_DATABASE_URL"):
        return
    server, name = SCRATCH_DATABASE.rsplit("/", 1)
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        done = subprocess.run(["psql", f"{server}/postgres", "-qc", sql], capture_output=True, text=True)  # noqa: S607
        if done.returncode != 0:
            raise SystemExit(
                f"Could not prepare the scratch database on {server} ({done.stderr.strip()}). Start PostgreSQL, "
                "or set BENCH_DATABASE_URL to a scratch database (sqlite:////tmp/bench.sqlite3 works)."
            )
    os.environ["BENCH_DATABASE_URL"] = SCRATCH_DATABASE


def prepare(base_url: str, patients: int) -> tuple[Any, Any]:
    """A tenant and connection with a signed-off mapping (codes mapped), ready for validate."""
    from django.contrib.auth import get_user_model

    from connections.models import EHRConnection
    from connections.sandbox.defects import LOCAL_LAB_CODES, LOCAL_LAB_SYSTEMS
    from onboarding.engine import services
    from onboarding.mapping import services as mappings
    from onboarding.models import StepRun
    from portal.models import Tenant

    user = get_user_model().objects.filter(username="bench").first() or get_user_model().objects.create_superuser(
        "bench", "bench@example.org", "bench-password-not-secret"
    )
    tenant = Tenant.objects.create(name=f"Benchmark hospital {time.time_ns()}")
    connection = EHRConnection.objects.create(tenant=tenant, name="bench", vendor="generic", base_url=base_url)
    onboarding = services.ensure_onboarding(connection)
    policy = mappings.policy_for(tenant)
    policy.validate_sample_size = patients
    policy.max_error_patient_pct = 100.0
    policy.save()
    local = [
        {"system": LOCAL_LAB_SYSTEMS["generic"], "code": code, "display": display, "count": 1}
        for code, display in LOCAL_LAB_CODES.values()
    ]
    profile = {
        "elements": [{"element": "Observation.code", "local_codes": local}],
        "extensions": [],
        "suggested_mrn_system": "http://hospital.example.org/mrn",
    }
    for step in ("configure", "test", "map"):
        StepRun.objects.create(onboarding=onboarding, step=step, attempt=1, status="passed")
    mapping = mappings.record_map_result(onboarding=onboarding, profile=profile, run=None)
    loinc_of = {code: loinc for loinc, (code, _) in LOCAL_LAB_CODES.items()}
    for row in list(mapping.codes):
        mapping = mappings.update_code(
            user=user,
            mapping=mapping,
            key=mappings.row_key(row),
            target_system="LOINC",
            target_code=loinc_of[row["code"]],
            target_display=row["display"],
        )
    # The sign-off gate: the vendor asks, a hospital approver (never vendor staff) decides.
    from onboarding.gates import services as gates
    from portal.services import grant_hospital_it

    approver = get_user_model().objects.create_user(f"bench-it-{time.time_ns()}", password=None)
    grant_hospital_it(tenant=tenant, member=approver)
    approval = gates.request_approval(user=user, onboarding=onboarding, gate_key=mappings.SIGN_OFF_GATE)
    gates.decide(user=approver, approval=approval, decision="approved")
    return user, connection


def run_validate(user: Any, connection: Any) -> tuple[float, Any]:
    from onboarding.engine import services

    run = services.start_step(user=user, onboarding=connection.onboarding, step="validate")
    started = time.perf_counter()
    services.execute_run(run.pk)
    elapsed = time.perf_counter() - started
    run.refresh_from_db()
    assert not run.is_active and run.result.get("patients"), (run.status, run.error_message)
    return elapsed, run


def download(connection: Any, patients: int) -> tuple[float, list[list[bytes]]]:
    """Pull what the step pulls with the same adapter and client, validating nothing; per patient, JSON bytes."""
    from connections.services import build_adapter
    from onboarding.steps.map import PATIENT_PAGE_SIZE

    adapter = build_adapter(connection)
    types = [
        t
        for t in (
            "Encounter",
            "Observation",
            "Condition",
            "MedicationRequest",
            "AllergyIntolerance",
            "Procedure",
            "Immunization",
        )
        if adapter.capability().supports(t)
    ]
    pulled: list[list[dict[str, Any]]] = []
    started = time.perf_counter()
    for patient in adapter.iter_raw_patients(limit=patients, page_size=PATIENT_PAGE_SIZE):
        group = [patient]
        for resource_type in types:
            group.extend(adapter.search_clinical_raw(resource_type, str(patient["id"])))
        pulled.append(group)
    elapsed = time.perf_counter() - started
    return elapsed, [[json.dumps(r).encode() for r in group] for group in pulled]


def ours(groups: list[list[bytes]], connection: Any) -> int:
    """The validate step's checks over JSON bytes, patient by patient, as the step runs them."""
    from django.utils import timezone

    from onboarding.mapping import services as mappings
    from onboarding.steps.validate import MappingRules, Validator

    mapping = mappings.signed_mapping(connection.onboarding)
    assert mapping is not None
    validator = Validator(rules=MappingRules.from_mapping(mapping), today=timezone.localdate())
    findings = 0
    for group in groups:
        patient = json.loads(group[0])
        findings += len(validator.check_patient(patient))
        encounter_ids: set[str] = set()
        birth = patient.get("birthDate")
        for body in group[1:]:
            resource = json.loads(body)
            if resource["resourceType"] == "Encounter":
                encounter_ids.add(resource["id"])
            findings += len(
                validator.check_resource(
                    resource, patient_id=patient["id"], encounter_ids=encounter_ids, birth_date=birth
                )
            )
    return findings


def theirs(groups: list[list[bytes]]) -> int:
    """fhir.resources (R4B models): parse and validate every resource; invalid ones are counted."""
    import importlib

    from pydantic import ValidationError

    models: dict[str, Any] = {}
    invalid = 0
    for group in groups:
        for body in group:
            resource_type = json.loads(body[: body.index(b",")] + b"}")["resourceType"]
            model = models.get(resource_type)
            if model is None:
                module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
                model = models[resource_type] = getattr(module, resource_type)
            try:
                model.model_validate_json(body)
            except ValidationError:
                invalid += 1
    return invalid


def speed(label: str, work: Any, resources: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    rate = resources / statistics.median(times)
    print(f"  {label:<44} {rate:>10,.0f} resources/s (median of {rounds})")
    return rate


def memory_child(patients: int, base_url: str, var_dir: str) -> None:
    """In a fresh process: the validate step over ``patients`` patients; prints peaks as JSON."""
    setup_django(var_dir, int(base_url.split(":")[2].split("/")[0]))
    user, connection = prepare(base_url, patients)
    tracemalloc.start()
    elapsed, run = run_validate(user, connection)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"patients": run.result["patients"], "traced_peak": peak, "rss_kib": rss_kib, "elapsed": elapsed}))


def memory(sizes: tuple[int, int], base_url: str, var_dir: str) -> dict[int, dict[str, Any]]:
    found = {}
    for size in sizes:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.validation", "--memory-child", str(size), base_url, var_dir],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        found[size] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def latency_child(method: str, patients: int, base_url: str, var_dir: str) -> None:
    """In a fresh process: the validate step over ``patients`` patients by one pull method; prints figures as JSON."""
    import httpx

    setup_django(var_dir, int(base_url.split(":")[2].split("/")[0]))
    from connections.models import EHRConnection

    user, connection = prepare(base_url, patients)
    pull_method, concurrency = METHODS[method]
    EHRConnection.objects.filter(pk=connection.pk).update(
        pull_method=pull_method, pull_concurrency=concurrency, bulk_export_levels="system,patient"
    )
    connection.refresh_from_db()
    origin = base_url.split("/fhir")[0]
    # Quick export polls, so the bulk figure is the export's work, not the sandbox's default 1 s delay.
    httpx.put(f"{origin}/_sandbox/faults", json={**_faults(origin), "export_delay_s": 0, "export_retry_after": 0.5})
    httpx.delete(f"{origin}/_sandbox/requests")
    tracemalloc.start()
    elapsed, run = run_validate(user, connection)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    requests = httpx.get(f"{origin}/_sandbox/requests").json()["capacity"]
    figures = {
        "method": method,
        "patients": run.result["patients"],
        "status": run.status,
        "findings": run.findings.count(),
        "elapsed": elapsed,
        "requests": requests["total"],
        "peak_in_flight": requests["peak_in_flight"],
        "traced_peak": peak,
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(figures))


def _faults(origin: str) -> dict[str, Any]:
    import httpx

    return {k: v for k, v in httpx.get(f"{origin}/_sandbox/faults").json().items() if k.startswith("latency")}


def latency_pass(args: Any) -> None:
    """Pass 4: sequential, concurrent and bulk pulls at the injected latency, each beside its floor."""
    methods = [m for m in args.latency_methods.split(",") if m]
    small = max(1, args.patients // 10)
    seconds = args.latency_ms / 1000
    print(
        f"\n4. Latency pass: validate at {args.latency_ms} ms per request, {args.patients} patients "
        f"(memory against {small}); fresh process per run"
    )
    found: dict[tuple[str, int], dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-latency-") as var_dir,
        sandbox(args.patients, args.latency_ms) as base_url,
    ):
        for method in methods:
            for size in (small, args.patients):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.validation",
                        "--latency-child",
                        method,
                        str(size),
                        base_url,
                        var_dir,
                    ],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found[method, size] = json.loads(out.stdout.strip().splitlines()[-1])
                figures = found[method, size]
                print(
                    f"  {method:<12} {size:>5} patients: {figures['elapsed']:7.1f} s, "
                    f"{figures['requests']:>6} requests, "
                    f"peak {figures['peak_in_flight']} in flight, {figures['findings']} findings",
                    flush=True,
                )
    header = f"{'method':<12} {'wall s':>8} {'floor s':>8} {'ratio':>7}   goal      traced MiB {small}/{args.patients}"
    print(f"\n  {header}   ratio")
    for method in methods:
        big, little = found[method, args.patients], found[method, small]
        concurrency = METHODS[method][1]
        floor = big["requests"] * seconds / concurrency
        ratio = big["elapsed"] / floor if floor else float("nan")
        if method == "bulk":
            goal = f"< {GOALS['bulk_s']:.0f} s"
        elif method == "sequential":
            goal = "(reference)"
        else:
            goal = f"<= {GOALS['floor']}x"
        memory = big["traced_peak"] / little["traced_peak"]
        print(
            f"  {method:<12} {big['elapsed']:>8.1f} {floor:>8.1f} {ratio:>6.2f}x   {goal:<9} "
            f"{little['traced_peak'] / 2**20:7.2f} / {big['traced_peak'] / 2**20:7.2f}   {memory:.2f}x "
            f"(goal <= {GOALS['memory']}x)"
        )
    same = {found[m, args.patients]["findings"] for m in methods}
    print(
        f"  findings at {args.patients} patients, by method: {sorted(same)} "
        f"({'identical' if len(same) == 1 else 'DIFFER'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", default=",".join(PASSES), help="which passes to run (default: all)")
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--latency-methods", default=",".join(METHODS))
    parser.add_argument("--memory-child", nargs=3, metavar=("PATIENTS", "BASE_URL", "VAR_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--latency-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1], args.memory_child[2])
        return
    if args.latency_child:
        method, size, base_url, var_dir = args.latency_child
        latency_child(method, int(size), base_url, var_dir)
        return
    passes = set(args.passes.split(","))
    if passes - set(PASSES):
        parser.error(f"unknown passes: {', '.join(sorted(passes - set(PASSES)))}; choose from {', '.join(PASSES)}")
    scratch_database()
    if passes & {"speed", "wall", "memory"}:
        classic_passes(args, passes)
    if "latency" in passes:
        latency_pass(args)


def classic_passes(args: Any, passes: set[str]) -> None:
    """Passes 1 to 3, on a sandbox without added latency."""
    small = max(1, args.patients // 10)
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as var_dir, sandbox(args.patients) as base_url:
        setup_django(var_dir, int(base_url.split(":")[2].split("/")[0]))
        user, connection = prepare(base_url, args.patients)
        # Pass 2 measures what checking costs over downloading, so the step pulls as the download does:
        # one request at a time (the latency pass measures the concurrent pulls).
        type(connection).objects.filter(pk=connection.pk).update(pull_concurrency=1)
        connection.refresh_from_db()
        download(connection, min(args.patients, 50))  # warm-up: connections, imports, caches

        walls, downloads = [], []
        groups: list[list[bytes]] = []
        run = None
        for _ in range(args.rounds if passes & {"speed", "wall"} else 0):
            elapsed, groups = download(connection, args.patients)
            downloads.append(elapsed)
            elapsed, run = run_validate(user, connection)
            walls.append(elapsed)
        if run is None:
            memory_pass(args, base_url, var_dir, small)
            return
        resources = sum(len(g) for g in groups)
        print(f"\nValidation benchmark: {len(groups)} patients, {resources} resources, generic sandbox with defects")
        print(f"  findings of the last validate run: {run.findings.count()}; status {run.status}")

        if "speed" in passes:
            speed_pass(args, groups, connection, resources)
        if "wall" in passes:
            wall, plain = statistics.median(walls), statistics.median(downloads)
            print("\n2. Validate step wall time against just downloading the same resources with the same client")
            print(f"  download only (adapter raw methods)         {plain:>8.2f} s (median of {args.rounds})")
            print(f"  validate step (execute_run, sequential)     {wall:>8.2f} s (median of {args.rounds})")
            print(f"  ratio step / download: {wall / plain:.2f}x (goal <= {GOALS['wall']}x)")
        if "memory" in passes:
            memory_pass(args, base_url, var_dir, small)


def speed_pass(args: Any, groups: list[list[bytes]], connection: Any, resources: int) -> None:
    """Pass 1: our checks against fhir.resources, resources per second."""
    print("\n1. Our validation against parse + validate with fhir.resources (R4B), same resources, CPU only")
    ours(groups[:20], connection)
    theirs(groups[:20])
    our_rate = speed(
        "ours (json.loads + all validate-step checks)", lambda: ours(groups, connection), resources, args.rounds
    )
    their_rate = speed("fhir.resources R4B model_validate_json", lambda: theirs(groups), resources, args.rounds)
    print(f"  ratio ours / fhir.resources: {our_rate / their_rate:.2f}x (goal >= {GOALS['speed']}x)")


def memory_pass(args: Any, base_url: str, var_dir: str, small: int) -> None:
    """Pass 3: the validate step's peak memory at a tenth of the patients and at all of them."""
    print(f"\n3. Peak memory of the validate step, {small} against {args.patients} patients (fresh processes)")
    peaks = memory((small, args.patients), base_url, var_dir)
    for size, peak in peaks.items():
        print(
            f"  {size:>5} patients: traced peak {peak['traced_peak'] / 2**20:7.2f} MiB, "
            f"process peak RSS {peak['rss_kib'] / 1024:7.1f} MiB, step {peak['elapsed']:.1f} s"
        )
    traced = peaks[args.patients]["traced_peak"] / peaks[small]["traced_peak"]
    rss = peaks[args.patients]["rss_kib"] / peaks[small]["rss_kib"]
    print(f"  ratio {args.patients}/{small}: traced {traced:.2f}x, RSS {rss:.2f}x (goal <= {GOALS['memory']}x)")


if __name__ == "__main__":
    main()
