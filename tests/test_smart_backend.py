"""SMART Backend Services end to end: keys made by the portal, verified by a sandbox hospital.

The sandbox's token endpoint checks the signed assertion itself (signature against the JWKS the
"hospital" registered, audience, times, replay), independently of PyJWT, so a pass here means
the portal's keys and assertions are right, not merely self-consistent. The failure cases a
hospital really produces (wrong key, wrong aud, a clock ten minutes off) must each come back as
a message that says what to fix. Pages and API: the public key set is shown and downloadable,
the private key never leaves the database.
"""

from __future__ import annotations

import base64
import email.utils
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from connections import keys
from connections.auth import AuthConfig, Authenticator, token_error, with_discovery
from connections.errors import ErrorKind, RemoteError
from connections.http import GuardedClient, OutboundPolicy
from connections.models import EHRConnection
from connections.sandbox import SandboxHospital
from connections.services import generate_key_pair
from onboarding.engine import services
from onboarding.models import RunStatus, StepRun
from portal.models import AuditEvent
from tests.conftest import client_for
from tests.factories import ConnectionFactory

CLIENT_ID = "portal-smart-client"
SCOPE = "system/Patient.read system/Observation.read"
PRIVATE_MARKERS = ("PRIVATE KEY", '"d":', '"p":', '"q":')


@pytest.fixture(scope="module")
def hospital() -> Iterator[SandboxHospital]:
    """An Epic-flavoured sandbox that accepts only SMART Backend Services signed assertions."""
    running = SandboxHospital(flavour="epic", seed=11, patients=12, auth="smart_backend", client_id=CLIENT_ID).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def fresh_hospital(hospital: SandboxHospital) -> Iterator[None]:
    hospital.set_faults()
    hospital.register_jwks(None)
    yield
    hospital.set_faults()
    hospital.register_jwks(None)


@pytest.fixture
def guarded(hospital: SandboxHospital) -> Iterator[GuardedClient]:
    with GuardedClient(OutboundPolicy(allowlist=frozenset({f"127.0.0.1:{hospital.port}"}))) as client:
        yield client


def smart_config(hospital: SandboxHospital, pair: keys.KeyPair, **overrides: Any) -> AuthConfig:
    values: dict[str, Any] = {
        "method": "smart_backend",
        "client_id": CLIENT_ID,
        "token_url": hospital.token_url,
        "scope": SCOPE,
        "private_key": pair.private_pem,
        "key_id": pair.key_id,
        "key_algorithm": pair.algorithm,
    }
    return AuthConfig(**{**values, **overrides})


def raises(call: Callable[[], Any]) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call()
    return info.value


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- Keys and assertions --------------------------------------------------------------------------


def test_rs384_keys_are_rsa_of_at_least_2048_bits_and_es384_keys_are_p384() -> None:
    rsa_pair, ec_pair = keys.generate_key_pair("RS384"), keys.generate_key_pair("ES384")
    rsa_key = serialization.load_pem_private_key(rsa_pair.private_pem.encode(), password=None)
    ec_key = serialization.load_pem_private_key(ec_pair.private_pem.encode(), password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size >= 2048
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey) and ec_key.curve.name == "secp384r1"
    assert rsa_pair.public_jwk["kty"] == "RSA" and ec_pair.public_jwk["crv"] == "P-384"
    for pair in (rsa_pair, ec_pair):
        jwk = pair.public_jwk
        assert jwk["alg"] == pair.algorithm and jwk["use"] == "sig" and jwk["kid"] == pair.key_id
        assert jwk["kid"] == keys.thumbprint(jwk)  # RFC 7638: the hospital can recompute it
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
        assert "PRIVATE" not in repr(pair) and pair.private_pem not in repr(pair)
    with pytest.raises(ValueError, match="RS384 or ES384"):
        keys.generate_key_pair("HS256")


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_a_client_assertion_carries_the_smart_claims(algorithm: str) -> None:
    pair = keys.generate_key_pair(algorithm)
    now = time.time()
    token_url = "https://fhir.hospital.example.org/oauth2/token"
    make = lambda: keys.client_assertion(  # noqa: E731 - two identical calls
        private_pem=pair.private_pem,
        algorithm=algorithm,
        key_id=pair.key_id,
        client_id=CLIENT_ID,
        token_url=token_url,
        now=now,
    )
    first, second = make(), make()
    header = json.loads(_b64decode(first.split(".")[0]))
    assert header == {"alg": algorithm, "kid": pair.key_id, "typ": "JWT"}
    public = jwt.PyJWK(pair.public_jwk).key
    claims = jwt.decode(first, public, algorithms=[algorithm], audience=token_url)
    assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == token_url
    assert 0 < claims["exp"] - int(now) <= 300
    assert claims["jti"] != jwt.decode(second, public, algorithms=[algorithm], audience=token_url)["jti"]


def test_a_key_of_the_wrong_type_is_an_auth_error_with_a_fix() -> None:
    rsa_pair = keys.generate_key_pair("RS384")
    error = raises(
        lambda: keys.client_assertion(
            private_pem=rsa_pair.private_pem,
            algorithm="ES384",
            key_id="k",
            client_id="c",
            token_url="https://x.example/token",
            now=time.time(),
        )
    )
    assert error.kind is ErrorKind.AUTH and "Generate a new key pair" in error.hint


# --- The sandbox really verifies ------------------------------------------------------------------


def _token_request(hospital: SandboxHospital, assertion: str) -> httpx.Response:
    with httpx.Client() as raw:
        return raw.post(
            hospital.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": keys.JWT_BEARER,
                "client_assertion": assertion,
                "scope": "system/Patient.read",
            },
        )


def _assertion(pair: keys.KeyPair, hospital: SandboxHospital, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": hospital.token_url, "exp": now + 200}
    body.update(jti=secrets.token_hex(8), **claims)
    key = serialization.load_pem_private_key(pair.private_pem.encode(), password=None)
    return jwt.encode(body, key, algorithm=pair.algorithm, headers={"kid": pair.key_id})


def test_the_sandbox_checks_signature_audience_times_and_replay(hospital: SandboxHospital) -> None:
    pair = keys.generate_key_pair("ES384")
    hospital.register_jwks(keys.jwks(pair.public_jwk))
    good = _assertion(pair, hospital)
    assert _token_request(hospital, good).status_code == 200
    replay = _token_request(hospital, good)
    assert replay.status_code == 401 and "jti" in replay.json()["error_description"]

    impostor = keys.generate_key_pair("ES384")
    # Same kid as the registered key, different key: only the signature check can catch it.
    forged = _assertion(keys.KeyPair("ES384", pair.key_id, impostor.private_pem, impostor.public_jwk), hospital)
    header, _payload, signature = good.split(".")
    tampered = f"{header}.{_assertion(pair, hospital, sub='someone-else').split('.')[1]}.{signature}"
    unsigned = jwt.encode({"iss": CLIENT_ID}, "a-shared-secret-is-not-a-registered-key-" * 2, algorithm="HS384")
    cases = {
        "signature": forged,
        "signature ": tampered,
        "aud": _assertion(pair, hospital, aud="https://elsewhere.example.org/token"),
        "expired": _assertion(pair, hospital, exp=int(time.time()) - 120),
        "five minutes": _assertion(pair, hospital, exp=int(time.time()) + 3600),
        "not yet valid": _assertion(pair, hospital, nbf=int(time.time()) + 600),
        "RS384 or ES384": unsigned,
        "iss and sub": _assertion(pair, hospital, iss="another-client", sub="another-client"),
    }
    for words, assertion in cases.items():
        refused = _token_request(hospital, assertion)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", words
        assert words.strip() in refused.json()["error_description"], (words, refused.json())


def test_the_jwks_is_registered_over_the_control_endpoint(hospital: SandboxHospital) -> None:
    pair = keys.generate_key_pair("RS384")
    url = f"http://127.0.0.1:{hospital.port}/_sandbox/jwks"
    with httpx.Client() as raw:
        assert raw.put(url, json=keys.jwks(pair.public_jwk)).json()["keys"][0]["kid"] == pair.key_id
        assert _token_request(hospital, _assertion(pair, hospital)).status_code == 200
        leaky = {**pair.public_jwk, "d": "AAAA"}
        refused = raw.put(url, json={"keys": [leaky]})
        assert refused.status_code == 400 and "private key material" in refused.text
        assert raw.put(url, json=[1]).status_code == 400
        assert raw.get(url).json()["keys"][0]["kid"] == pair.key_id  # a refused PUT changes nothing
        assert raw.delete(url).json() == {"keys": []}
    assert _token_request(hospital, _assertion(pair, hospital)).status_code == 401


def test_smart_configuration_advertises_private_key_jwt(hospital: SandboxHospital) -> None:
    with httpx.Client() as raw:
        smart = raw.get(f"{hospital.base_url}/.well-known/smart-configuration").json()
    assert smart["token_endpoint"] == hospital.token_url
    assert smart["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert smart["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]


# --- The portal's flow against it -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_the_authenticator_gets_and_caches_a_token(
    hospital: SandboxHospital, guarded: GuardedClient, algorithm: str
) -> None:
    pair = keys.generate_key_pair(algorithm)
    hospital.register_jwks(keys.jwks(pair.public_jwk))
    auth = Authenticator(smart_config(hospital, pair), guarded)
    header = auth.headers()
    assert header["Authorization"].startswith("Bearer ") and auth.headers() == header  # cached
    info = auth.token_info()
    assert info is not None and info.expires_in == 300 and info.scopes == tuple(SCOPE.split())
    assert pair.private_pem not in repr(auth.config) and "***" in repr(auth.config)


def test_discovery_reads_the_token_url_and_checks_the_algorithm() -> None:
    pair = keys.generate_key_pair("ES384")
    config = AuthConfig(method="smart_backend", client_id="c", key_algorithm="ES384", private_key=pair.private_pem)
    smart = {
        "token_endpoint": "https://h.example.org/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    }
    assert with_discovery(config, smart).token_url == "https://h.example.org/token"
    only_rsa = {**smart, "token_endpoint_auth_signing_alg_values_supported": ["RS384"]}
    error = raises(lambda: with_discovery(config, only_rsa))
    assert error.kind is ErrorKind.AUTH and "RS384" in error.message and "Generate a RS384 key pair" in error.hint
    secret_only = {**smart, "token_endpoint_auth_methods_supported": ["client_secret_basic"]}
    assert "private_key_jwt" in raises(lambda: with_discovery(config, secret_only)).message


NOW = 1_800_000_000.0


def http_date(offset: float) -> str:
    """The hospital's Date header when its clock is ``offset`` seconds off ours."""
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("code", "description", "server_date", "expected"),
    [
        ("invalid_client", "signature verification failed", http_date(2), "could not verify our signed assertion"),
        ("invalid_client", "Invalid audience", http_date(0), "addressed to a different token URL"),
        ("invalid_client", "JWT expired", http_date(-3), "had expired when it arrived"),
        ("invalid_client", "token not yet valid (nbf)", http_date(0), "not valid yet"),
        ("invalid_client", "JWT expired", http_date(600), "differ by about 10 minutes"),
        ("invalid_client", "iat in the future", http_date(-600), "the hospital is behind by 600 s"),
        ("invalid_client", "signature invalid", http_date(600), "could not verify our signed assertion"),
        ("invalid_client", "jti reused", http_date(0), "already seen our signed assertion's id"),
        ("invalid_client", None, http_date(0), "did not accept our signed assertion for client id c-1"),
        ("invalid_grant", None, None, "refused the grant for client id c-1"),
        ("unauthorized_client", None, None, "does not allow client id c-1 to use SMART Backend Services"),
        ("invalid_scope", "scope not granted", None, "refused the requested scopes (system/Patient.read)"),
    ],
)
def test_token_endpoint_refusals_become_fix_steps(
    code: str, description: str | None, server_date: str | None, expected: str
) -> None:
    detail: dict[str, Any] = {"status": 400, "oauth_error": code}
    if description:
        detail["oauth_error_description"] = description
    if server_date:
        detail["server_date"] = server_date
    config = AuthConfig(
        method="smart_backend", client_id="c-1", scope="system/Patient.read", token_url="https://h.example/t"
    )
    error = token_error(RemoteError(ErrorKind.BAD_REQUEST, detail=detail), config, now=NOW)
    assert error.kind is ErrorKind.AUTH and expected in error.message, error.message


# --- End to end through the pipeline (configure and test steps) ----------------------------------


def run_now(connection: EHRConnection, step: str, user: Any) -> StepRun:
    onboarding = services.ensure_onboarding(connection)
    run = services.start_step(user=user, onboarding=onboarding, step=step)
    services.execute_run(run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def smart_connection(
    hospital: SandboxHospital, settings: Any, tenant_a: Any, cs_user: Any
) -> Callable[..., EHRConnection]:
    """A SMART Backend Services connection to the sandbox with a key pair made by the portal."""
    settings.OUTBOUND_ALLOWLIST = [f"127.0.0.1:{hospital.port}"]

    def make(algorithm: str = "RS384", **fields: Any) -> EHRConnection:
        values = {
            "tenant": tenant_a,
            "vendor": "epic",
            "base_url": hospital.base_url,
            "auth_method": "smart_backend",
            "client_id": CLIENT_ID,
            "scope": SCOPE,
            "token_url": "",
        }
        connection = ConnectionFactory(**{**values, **fields})
        return generate_key_pair(user=cs_user, connection=connection, algorithm=algorithm)

    return make


@pytest.mark.django_db
@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_portal_keys_pass_configure_and_test(
    hospital: SandboxHospital, smart_connection: Callable[..., EHRConnection], cs_user: Any, algorithm: str
) -> None:
    connection = smart_connection(algorithm)
    hospital.register_jwks(connection.jwks)  # what the hospital's IT team does with the download
    configure = run_now(connection, "configure", cs_user)
    assert configure.status == RunStatus.PASSED, (configure.error_kind, configure.error_message)
    smart = configure.result["smart_configuration"]
    assert smart["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert algorithm in smart["token_endpoint_auth_signing_alg_values_supported"]
    test = run_now(connection, "test", cs_user)
    assert test.status == RunStatus.PASSED, (test.error_kind, test.error_message)
    credential = test.result["credential"]
    assert credential["auth_method"] == "smart_backend" and credential["expires_in"] == 300
    assert credential["scopes"] == SCOPE.split() and credential["missing_scopes"] == []
    assert credential["key_algorithm"] == algorithm and credential["key_id"] == connection.key_id
    assert credential["key_age_days"] == 0
    assert "token granted for 300s" in test.result["checks"][0]["detail"]
    page = client_for(cs_user).get(reverse("run_detail", kwargs={"code": test.code})).content.decode()
    assert 'data-testid="credential-health"' in page and connection.key_id in page and "0 days old" in page
    stored = json.dumps([test.result, test.log, configure.result, configure.log, page])
    stored += json.dumps(list(AuditEvent.objects.values_list("detail", flat=True)))
    assert not any(marker in stored for marker in PRIVATE_MARKERS)


def _failed_test(connection: EHRConnection, user: Any) -> StepRun:
    """Configure passes (metadata is public); the test step's authentication fails."""
    assert run_now(connection, "configure", user).status == RunStatus.PASSED
    run = run_now(connection, "test", user)
    assert run.status == RunStatus.FAILED and run.error_kind == "auth", (run.error_kind, run.error_message)
    assert run.result["checks"][0]["outcome"] == "failed"
    return run


@pytest.mark.django_db
def test_a_wrong_key_fails_with_the_register_the_jwks_fix(
    hospital: SandboxHospital, smart_connection: Callable[..., EHRConnection], cs_user: Any
) -> None:
    connection = smart_connection("ES384")
    hospital.register_jwks(keys.jwks(keys.generate_key_pair("ES384").public_jwk))  # someone else's key
    run = _failed_test(connection, cs_user)
    assert "could not verify our signed assertion with the public key" in run.error_message
    assert connection.key_id in run.error_message


@pytest.mark.django_db
def test_a_wrong_audience_fails_with_the_token_url_fix(
    hospital: SandboxHospital, smart_connection: Callable[..., EHRConnection], cs_user: Any
) -> None:
    # One character off: the hospital publishes .../oauth2/token, not .../oauth2/token/.
    connection = smart_connection("RS384", token_url=hospital.token_url + "/")
    hospital.register_jwks(connection.jwks)
    run = _failed_test(connection, cs_user)
    assert "addressed to a different token URL" in run.error_message
    assert hospital.token_url + "/" in run.error_message


@pytest.mark.django_db
@pytest.mark.parametrize(("offset", "words"), [(600, "ahead by"), (-600, "behind by")])
def test_a_clock_ten_minutes_off_fails_with_the_clock_fix(
    hospital: SandboxHospital, smart_connection: Callable[..., EHRConnection], cs_user: Any, offset: int, words: str
) -> None:
    connection = smart_connection("ES384")
    hospital.register_jwks(connection.jwks)
    hospital.set_faults(clock_offset_s=offset)
    run = _failed_test(connection, cs_user)
    assert "clock and ours differ by about 10 minutes" in run.error_message and words in run.error_message
    hospital.set_faults()
    assert run_now(connection, "test", cs_user).status == RunStatus.PASSED  # same key, clocks agree again


@pytest.mark.django_db
def test_a_scope_the_hospital_does_not_grant_is_named(
    hospital: SandboxHospital, smart_connection: Callable[..., EHRConnection], cs_user: Any
) -> None:
    connection = smart_connection("RS384", scope="system/Patient.read system/Bogus.read")
    hospital.register_jwks(connection.jwks)
    run = _failed_test(connection, cs_user)
    assert "refused the requested scopes (system/Patient.read system/Bogus.read)" in run.error_message


# --- Pages ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_customer_success_generates_and_replaces_a_key_on_the_connection_page(tenant_a: Any, cs_user: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, auth_method="smart_backend", client_id=CLIENT_ID)
    client = client_for(cs_user)
    page = client.get(reverse("connection_detail", kwargs={"code": connection.code})).content.decode()
    assert 'data-testid="smart-key"' in page and "No key pair yet" in page and 'data-testid="generate-key"' in page
    url = reverse("connection_smart_key", kwargs={"code": connection.code})
    response = client.post(url, {"algorithm": "ES384"})
    assert response.status_code == 302
    connection.refresh_from_db()
    first_kid = connection.key_id
    assert connection.key_algorithm == "ES384" and connection.private_key.startswith("-----BEGIN PRIVATE KEY")
    page = client.get(reverse("connection_detail", kwargs={"code": connection.code})).content.decode()
    assert first_kid in page and '"crv": "P-384"' in page.replace("&quot;", '"')

    # Replacing needs an explicit confirmation, and says why.
    refused = client.post(url, {"algorithm": "RS384"})
    assert refused.status_code == 200 and "Tick this box to confirm" in refused.content.decode()
    connection.refresh_from_db()
    assert connection.key_id == first_kid
    assert client.post(url, {"algorithm": "RS384", "confirm_replace": "on"}).status_code == 302
    connection.refresh_from_db()
    assert connection.key_algorithm == "RS384" and connection.key_id != first_kid

    events = AuditEvent.objects.filter(action="connection.key_generate", object_id=str(connection.code))
    assert [e.detail["replaced_key_id"] for e in events.order_by("pk")] == [None, first_kid]
    everything = page + refused.content.decode() + json.dumps([e.detail for e in events])
    assert not any(marker in everything for marker in PRIVATE_MARKERS)


@pytest.mark.django_db
def test_the_jwks_download_is_public_keys_only(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, name="Alpha Epic", auth_method="smart_backend", client_id="c")
    connection = generate_key_pair(user=cs_user, connection=connection, algorithm="RS384")
    # Hospital IT registers the key, so they may download it.
    response = client_for(it_a).get(reverse("connection_jwks", kwargs={"code": connection.code}))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-epic-jwks.json"'
    body = json.loads(response.content)
    assert body == {"keys": [connection.public_jwk]} and body["keys"][0]["kty"] == "RSA"
    assert not any(marker in response.content.decode() for marker in PRIVATE_MARKERS)


@pytest.mark.django_db
def test_who_may_generate_keys(tenant_a: Any, cs_user: Any, engineer: Any, it_a: Any, it_b: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, auth_method="smart_backend", client_id="c")
    smart_key = reverse("connection_smart_key", kwargs={"code": connection.code})
    jwks_url = reverse("connection_jwks", kwargs={"code": connection.code})
    for user in (it_a, engineer):  # can see the connection, may not change it
        client = client_for(user)
        assert client.get(smart_key).status_code == 403
        assert client.post(smart_key, {"algorithm": "RS384"}).status_code == 403
        page = client.get(reverse("connection_detail", kwargs={"code": connection.code})).content.decode()
        assert 'data-testid="generate-key"' not in page
    other = client_for(it_b)
    for url in (smart_key, jwks_url, reverse("connection_detail", kwargs={"code": connection.code})):
        assert other.get(url).status_code == 404, url
    connection.refresh_from_db()
    assert not connection.has_key


@pytest.mark.django_db
def test_no_key_pair_for_a_connection_that_does_not_use_smart(tenant_a: Any, cs_user: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, auth_method="none")
    page = client_for(cs_user).get(reverse("connection_detail", kwargs={"code": connection.code}))
    assert 'data-testid="smart-key"' not in page.content.decode()
    response = client_for(cs_user).post(
        reverse("connection_smart_key", kwargs={"code": connection.code}), {"algorithm": "RS384"}
    )
    assert response.status_code == 200 and "does not use SMART Backend Services" in response.content.decode()
    connection.refresh_from_db()
    assert not connection.has_key


@pytest.mark.django_db
def test_the_connection_form_takes_smart_without_a_secret(tenant_a: Any, cs_user: Any) -> None:
    client = client_for(cs_user)
    url = reverse("connection_create", kwargs={"code": tenant_a.code})
    fields = {
        "name": "Riverside Epic backend",
        "vendor": "epic",
        "environment": "sandbox",
        "base_url": "https://fhir.riverside.example.org/api/FHIR/R4",
        "auth_method": "smart_backend",
        "client_id": "riverside-backend",
        "token_auth_method": "client_secret_basic",
        "scope": "system/*.read",
    }
    with_secret = client.post(url, {**fields, "secret": "not-for-smart"})
    assert with_secret.status_code == 200 and "signs with a key pair made here" in with_secret.content.decode()
    assert client.post(url, fields).status_code == 302
    connection = EHRConnection.objects.get(name="Riverside Epic backend")
    assert connection.auth_method == "smart_backend" and not connection.has_secret and not connection.has_key


# --- API -----------------------------------------------------------------------------------------


def api_for(user: Any) -> APIClient:
    api = APIClient()
    _, key = AuthToken.objects.create(user=user)
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return api


@pytest.mark.django_db
def test_the_api_returns_the_jwks_and_never_the_private_key(tenant_a: Any, cs_user: Any, it_a: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, auth_method="smart_backend", client_id="c")
    api = api_for(cs_user)
    base = f"/api/v1/connections/{connection.code}/"
    assert api.get(base + "jwks/").json() == {"keys": []}
    created = api.post(base + "generate-key/", {"algorithm": "ES384"}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["has_key"] and body["key_algorithm"] == "ES384" and body["jwks"]["keys"][0]["crv"] == "P-384"
    again = api.post(base + "generate-key/", {"algorithm": "RS384"}, format="json")
    assert again.status_code == 400 and "replace" in again.json()
    replaced = api.post(base + "generate-key/", {"algorithm": "RS384", "replace": True}, format="json")
    assert replaced.status_code == 201 and replaced.json()["key_id"] != body["key_id"]

    read = api_for(it_a).get(base)
    assert read.status_code == 200 and read.json()["jwks"] == api.get(base + "jwks/").json()
    assert "private_key" not in read.json()
    assert api_for(it_a).post(base + "generate-key/", {"algorithm": "RS384"}, format="json").status_code == 403
    everything = json.dumps([body, again.json(), replaced.json(), read.json()])
    assert not any(marker in everything for marker in PRIVATE_MARKERS)


@pytest.mark.django_db
def test_the_api_refuses_a_key_for_a_non_smart_connection(tenant_a: Any, cs_user: Any) -> None:
    connection = ConnectionFactory(tenant=tenant_a, auth_method="basic", client_id="u", secret="s3cret-basic")
    response = api_for(cs_user).post(
        f"/api/v1/connections/{connection.code}/generate-key/", {"algorithm": "RS384"}, format="json"
    )
    assert response.status_code == 400 and "auth_method" in response.json()
    create = api_for(cs_user).post(
        "/api/v1/connections/",
        {
            "tenant": str(tenant_a.code),
            "name": "SMART via API",
            "base_url": "https://fhir.example.org/r4",
            "auth_method": "smart_backend",
            "client_id": "api-client",
            "secret": "should-not-be-here",
        },
        format="json",
    )
    assert create.status_code == 400 and "secret" in create.json()
