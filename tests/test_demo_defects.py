"""The demo shows its own defects: with the default policy (10 patients), map on the demo's defect
sandbox finds local codes, and validate reports errors, as the README promises.

The sandbox is started with the demo's own settings (``onboarding.demo.SANDBOXES``), on a free port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from connections.sandbox import SandboxHospital
from connections.sandbox.data import generate_population
from connections.sandbox.defects import DEFECT_KINDS, parse_defects, plant_defects
from connections.sandbox.flavours import FLAVOURS
from onboarding import demo
from onboarding.mapping import services as mappings
from onboarding.models import RunStatus, ValidationPolicy
from tests.factories import sign_mapping_off
from tests.test_map_step import map_every_code, ready_connection, run_now

pytestmark = pytest.mark.django_db

DEFAULT_SAMPLE = ValidationPolicy._meta.get_field("map_sample_size").default


@pytest.fixture(scope="module")
def demo_defects() -> Iterator[SandboxHospital]:
    """The demo's defect sandbox, exactly as `manage.py demo` configures it, on a free port."""
    (sandbox,) = [s for s in demo.SANDBOXES if s.defects]
    hospital = SandboxHospital(**{**sandbox.options(), "port": 0}).start()
    yield hospital
    hospital.stop()


@pytest.fixture
def allowed(settings: Any, demo_defects: SandboxHospital) -> SandboxHospital:
    settings.OUTBOUND_ALLOWLIST = [f"127.0.0.1:{demo_defects.port}"]
    return demo_defects


def test_the_demo_sandbox_plants_every_kind_within_the_default_sample() -> None:
    (sandbox,) = [s for s in demo.SANDBOXES if s.defects]
    options = sandbox.options()
    flavour = FLAVOURS[options["flavour"]]
    population = generate_population(seed=1, patients=options["patients"], flavour=flavour, extended=True)
    planted = plant_defects(population, seed=1, flavour=flavour, config=parse_defects(options["defects"], flavour.name))
    first = [p["id"] for p in population.patients[:DEFAULT_SAMPLE]]
    shown = Counter(p.kind for p in planted if p.patient_id in first or p.resource_id in first)
    assert set(shown) == set(DEFECT_KINDS), shown
    # After the showcase, the flavour's rates go on: the rest of the population is not all defects.
    assert len(planted) < len(population.patients)


def test_map_and_validate_find_the_demo_defects_with_the_default_policy(
    allowed: SandboxHospital, tenant_a: Any, cs_user: Any, it_a: Any
) -> None:
    policy = mappings.policy_for(tenant_a)
    assert (policy.map_sample_size, policy.validate_sample_size) == (DEFAULT_SAMPLE, DEFAULT_SAMPLE) == (10, 10)
    connection = ready_connection(tenant_a, cs_user, allowed)

    first = run_now(connection, "map", cs_user)
    assert first.status == RunStatus.FAILED and first.error_kind == "mapping_incomplete", first.error_message
    mapping = mappings.latest_mapping(connection.onboarding)
    assert mapping is not None and len(mapping.codes) >= 1, "map found no local code in the default sample"
    assert mapping.extension_handling, "map found no unknown extension"

    map_every_code(cs_user, connection)
    again = run_now(connection, "map", cs_user)
    assert again.status == RunStatus.PASSED, again.error_message
    signed = mappings.latest_mapping(connection.onboarding)
    assert signed is not None
    sign_mapping_off(cs=cs_user, it=it_a, mapping=signed)

    validate = run_now(connection, "validate", cs_user)
    result = validate.result or {}
    assert result["patients"] >= DEFAULT_SAMPLE
    # Mapped codes are no longer errors; the planted structure and reference defects still are.
    assert result["findings"]["error"] > 0, result["findings"]
    assert validate.status == RunStatus.FAILED  # the default policy allows no patient with an error
    rules = set(validate.findings.values_list("rule", flat=True))
    assert {"structure.invalid", "references.unresolved", "patient.second-mrn-system"} <= rules, rules
