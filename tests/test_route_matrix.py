"""Every route of the project against every persona, from the table in tests/route_matrix.py.

Checked per cell: anonymous is sent to login (pages) or gets 401 (API); another tenant's object is
a 404, answered exactly like a missing one; a role that may see but not do gets 403; lists never
carry the other tenant's codes or names. A URL name missing from the table fails the first test.
"""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from portal.services import assign_staff_to_tenant
from tests import route_matrix
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.route_matrix import MISSING, PERSONAS, ROUTES, Call, World

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Pattern:
    name: str | None
    route: str
    params: tuple[str, ...]


def project_patterns() -> Iterator[Pattern]:
    """Every URL pattern of the project, with its namespaced name and its parameters."""

    def walk(patterns: list[Any], prefix: str, namespace: str, params: tuple[str, ...]) -> Iterator[Pattern]:
        for item in patterns:
            groups = tuple(item.pattern.regex.groupindex)
            if isinstance(item, URLResolver):
                inner = ":".join(n for n in (namespace, item.namespace or "") if n)
                yield from walk(item.url_patterns, prefix + str(item.pattern), inner, params + groups)
            elif isinstance(item, URLPattern):
                name = f"{namespace}:{item.name}" if namespace and item.name else item.name
                yield Pattern(name, prefix + str(item.pattern), params + groups)

    yield from walk(get_resolver().url_patterns, "/", "", ())


def is_admin(pattern: Pattern) -> bool:
    return pattern.route.startswith("/admin/")


def matrix_gaps() -> list[str]:
    """What the matrix lacks for the current URL map, each as a message that says what to add."""
    patterns = list(project_patterns())
    gaps = []
    unnamed = sorted({p.route for p in patterns if p.name is None and not is_admin(p)})
    if unnamed:
        gaps.append(f"Give these URL patterns a name and an entry in tests/route_matrix.py: {unnamed}")
    names = {p.name for p in patterns if p.name and not is_admin(p)}
    for name in sorted(names - ROUTES.keys()):
        route = next(p.route for p in patterns if p.name == name)
        gaps.append(
            f"Route {name!r} ({route}) is missing from the authorization matrix. Add to ROUTES in "
            f'tests/route_matrix.py:\n    "{name}": [page(lambda w: reverse("{name}", kwargs=...), owner="a", '
            f'expect={{"it_a": ..., "cs": ..., "engineer": ...}})],'
        )
    stale = sorted(ROUTES.keys() - names)
    if stale:
        gaps.append(f"tests/route_matrix.py has entries for URL names that no longer exist: {stale}")
    return gaps


def test_every_route_is_in_the_matrix() -> None:
    gaps = matrix_gaps()
    assert not gaps, "\n".join(gaps)


def test_a_route_without_an_entry_fails_the_matrix(settings: Any) -> None:
    from django.http import HttpResponse
    from django.urls import clear_url_caches, path

    import portal.urls

    urlconf = types.ModuleType("urlconf_with_a_new_route")
    urlconf.urlpatterns = [*portal.urls.urlpatterns, path("new-page/", lambda r: HttpResponse(), name="new_page")]  # type: ignore[attr-defined]
    settings.ROOT_URLCONF = urlconf
    clear_url_caches()
    try:
        gaps = matrix_gaps()
    finally:
        clear_url_caches()
    assert len(gaps) == 1
    assert "Route 'new_page' (/new-page/) is missing from the authorization matrix" in gaps[0]
    assert "tests/route_matrix.py" in gaps[0]


# --- Running the matrix ------------------------------------------------------------------------------


@pytest.fixture
def world(tenant_a: Any, tenant_b: Any) -> World:
    return route_matrix.build_world(tenant_a=tenant_a, tenant_b=tenant_b)


@pytest.fixture
def logged_in(it_a: Any, it_b: Any, cs_user: Any, engineer: Any) -> dict[str, Client]:
    """One logged-in client per persona; each call copies its cookies into a fresh client."""
    clients = {"anon": Client(), "it_a": client_for(it_a), "it_b": client_for(it_b), "cs": client_for(cs_user)}
    clients["engineer"] = client_for(engineer)
    return clients


@dataclass
class Tally:
    routes: int = 0
    cells: int = 0
    extra: int = 0
    leaks: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def send(
    base: Client, call_method: str, url: str, data: dict[str, Any] | None, *, kind: str, htmx: bool, keep: bool = False
) -> Any:
    """Make one request in a savepoint that is rolled back (unless `keep`), so no call sees another's writes.

    The request goes out with a copy of the persona's cookies, so a call that logs out changes nothing
    for the next one.
    """
    client = _sender(base)
    client.cookies = copy.deepcopy(base.cookies)
    headers = {"HX-Request": "true"} if htmx else {}
    with transaction.atomic():
        if call_method == "GET":
            response = client.get(url, headers=headers)
        elif kind == "api":
            body = json.dumps(data or {})
            response = client.generic(call_method, url, body, content_type="application/json", headers=headers)
        else:
            response = client.generic(
                call_method, url, _form(data), content_type="application/x-www-form-urlencoded", headers=headers
            )
        transaction.set_rollback(not keep)
    return response


_SENDER: list[Client] = []


def _sender(base: Client) -> Client:
    # One sending client for every call (its cookies are replaced each time): a new Client loads
    # the middleware again, and WhiteNoise then rescans every static file, several times slower.
    if not _SENDER:
        _SENDER.append(Client(raise_request_exception=False))  # a crash is a 500 cell, not an abort
    return _SENDER[0]


def _form(data: dict[str, Any] | None) -> str:
    from urllib.parse import urlencode

    return urlencode(data or {})


def content_of(response: Any) -> bytes:
    """The body, for plain and streaming (CSV) answers alike; read once and kept."""
    if getattr(response, "streaming", False):
        if not hasattr(response, "_matrix_body"):
            response._matrix_body = b"".join(response.streaming_content)
        return bytes(response._matrix_body)
    return bytes(response.content)


def denied(expected: int | None) -> bool:
    return expected is None or expected in (401, 403, 404)


def check(tally: Tally, label: str, response: Any, expected: int | None, *, kind: str) -> None:
    """Compare one answer with its expectation; a denied persona that got through is a leak."""
    if expected is None:  # anonymous on a non-public route
        if kind == "page":
            ok = response.status_code == 302 and response["Location"].startswith(reverse("login"))
            want = "302 to the login page"
        else:
            ok, want = response.status_code == 401, "401"
    else:
        ok, want = response.status_code == expected, str(expected)
    if ok:
        return
    message = f"{label}: expected {want}, got {response.status_code}"
    # Anything but 404 for another tenant's object tells the caller it exists.
    if (denied(expected) and response.status_code < 400) or (expected == 404 and response.status_code == 403):
        tally.leaks.append(message)
    else:
        tally.mismatches.append(message)


def run_call(tally: Tally, name: str, call: Call, world: World, clients: dict[str, Client]) -> None:
    url = call.url(world)
    data = call.data(world) if call.data else None
    foreign: Any = None
    for persona in PERSONAS:
        expected = call.expected(persona)
        label = f"{call.method} {name} ({url}) as {persona}"
        response = send(clients[persona], call.method, url, data, kind=call.kind, htmx=False)
        tally.cells += 1
        check(tally, label, response, expected, kind=call.kind)
        if persona == "it_b" and call.owner == "a":
            foreign = response
        if call.lists and persona in ("it_a", "it_b"):
            tally.extra += 1
            body = content_of(response).decode(errors="replace")
            shown = [marker for marker in world.foreign_markers(persona) if marker in body]
            if shown:
                tally.leaks.append(f"{label}: the list shows the other tenant's {shown}")
        if call.htmx:
            tally.extra += 1
            partial = send(clients[persona], call.method, url, data, kind=call.kind, htmx=True)
            check(tally, label + " (htmx)", partial, expected, kind=call.kind)
    if call.owner == "a" and foreign is not None:
        tally.extra += 1
        missing_url, missing_data = _with_missing_codes(world, url, data)
        missing = send(clients["it_b"], call.method, missing_url, missing_data, kind=call.kind, htmx=False)
        if (missing.status_code, content_of(missing)) != (foreign.status_code, content_of(foreign)):
            tally.leaks.append(
                f"{call.method} {name}: a foreign object ({foreign.status_code}) does not look like a missing one "
                f"({missing.status_code})"
            )


def _with_missing_codes(world: World, url: str, data: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    codes = [world.tenant_a.code, world.conn_a.code, world.onboarding_a.code, world.run_a.code, world.active_run_a.code]
    # world.extra holds more of tenant A's objects; any that a URL names by code is swapped too.
    codes += [obj.code for obj in world.extra.values() if getattr(obj, "code", None)]
    codes += [obj.code for obj in world.extra.values() if hasattr(obj, "code")]
    text = json.dumps(data) if data is not None else ""
    for code in codes:
        url = url.replace(str(code), MISSING)
        text = text.replace(str(code), MISSING)
    return url, (json.loads(text) if data is not None else None)


def run_admin(tally: Tally, clients: dict[str, Client]) -> None:
    """Every admin page: nobody here is admin staff, so all are sent to the admin login."""
    for pattern in project_patterns():
        if not is_admin(pattern) or pattern.name is None:
            continue
        tally.routes += 1
        kwargs = {param: route_matrix.ADMIN_DUMMY_KWARGS[param] for param in pattern.params}
        url = reverse(pattern.name, kwargs=kwargs or None)
        status, target = route_matrix.ADMIN_EXPECT.get(pattern.name, route_matrix.ADMIN_DEFAULT)
        for persona in PERSONAS:
            response = send(clients[persona], "GET", url, None, kind="page", htmx=False)
            tally.cells += 1
            where = response.get("Location", "")
            if response.status_code != status or not where.startswith(target):
                message = f"GET {pattern.name} ({url}) as {persona}: expected {status} {target}, got "
                message += f"{response.status_code} {where}"
                opened = response.status_code < 300 and status >= 300  # an admin page shown to a non-admin
                (tally.leaks if opened else tally.mismatches).append(message)


def test_every_route_against_every_persona(
    world: World, logged_in: dict[str, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    for name, calls in ROUTES.items():
        tally.routes += 1
        for call in calls:
            run_call(tally, name, call, world, logged_in)
    run_admin(tally, logged_in)
    with capsys.disabled():
        print(
            f"\nroute matrix: {tally.routes} routes x {len(PERSONAS)} personas = {tally.cells} cells tested "
            f"(+{tally.extra} htmx, missing-object and list checks); {len(tally.leaks)} leaks, "
            f"{len(tally.mismatches)} other mismatches"
        )
    assert not tally.leaks, "Leaks:\n" + "\n".join(tally.leaks)
    assert not tally.mismatches, "Unexpected answers:\n" + "\n".join(tally.mismatches)


# --- IDOR: foreign ids in bodies and form choices ---------------------------------------------------


@pytest.mark.parametrize("case", route_matrix.IDOR_CASES, ids=lambda case: case.description)
def test_foreign_ids_in_bodies_are_refused(
    case: route_matrix.IdorCase, world: World, logged_in: dict[str, Client], tenant_a: Any
) -> None:
    clients = dict(logged_in)
    scoped = UserFactory(username="cs-scoped-a")
    from django.contrib.auth.models import Permission

    scoped.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_ehrconnection", "change_ehrconnection", "add_tenant"])
    )
    assign_staff_to_tenant(tenant=tenant_a, member=scoped)
    clients["cs_scoped_a"] = client_for(scoped)
    url = case.url(world)
    kind = "api" if url.startswith("/api/") else "page"  # JSON to the API, a form post to pages
    response = send(clients[case.persona], case.method, url, case.data(world), kind=kind, htmx=False, keep=True)
    assert response.status_code == case.refused_with, response.content
    assert case.unchanged(world), case.description
