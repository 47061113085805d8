"""Settings for the onboarding portal, read from the environment.

Two run modes (PORTAL_MODE):
- ``embedded`` (default): SQLite and a broker that lives in a SQLite file, both under ``var/``,
  with development secrets generated once into ``var/``. One command brings the demo up.
- ``production``: every secret and URL must be given; nothing is generated or guessed.
"""

from __future__ import annotations

import json
import math
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from portal.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(BASE_DIR / "var")))

PORTAL_MODE = env_str("PORTAL_MODE", "embedded")
if PORTAL_MODE not in {"embedded", "production"}:
    raise ImproperlyConfigured(f"PORTAL_MODE must be 'embedded' or 'production', not {PORTAL_MODE!r}.")
PRODUCTION = PORTAL_MODE == "production"


def _embedded_secrets() -> dict[str, str]:
    """Secrets for the embedded mode, made once and kept in var/ so restarts can still decrypt."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / "embedded-secrets.json"
    kept: dict[str, str] = dict(json.loads(path.read_text())) if path.exists() else {}
    wanted = {
        "SECRET_KEY": lambda: secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": lambda: Fernet.generate_key().decode(),
        "PSEUDONYM_KEY": lambda: secrets.token_urlsafe(32),
    }
    missing = {name: make() for name, make in wanted.items() if name not in kept}
    if missing:
        # Only add what is missing: a value already in use must never change under existing data.
        kept.update(missing)
        path.write_text(json.dumps(kept))
        path.chmod(0o600)
    return kept


_generated = {} if PRODUCTION else _embedded_secrets()

DEBUG = env_bool("DJANGO_DEBUG", default=not PRODUCTION)
SECRET_KEY = env_str("SECRET_KEY", None if PRODUCTION else _generated["SECRET_KEY"])
# Separate from SECRET_KEY so rotating one never strands the other; the first key encrypts,
# all of them decrypt (MultiFernet).
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS", "" if PRODUCTION else _generated["FIELD_ENCRYPTION_KEYS"])
if not FIELD_ENCRYPTION_KEYS:
    raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS must hold at least one Fernet key.")
for _key in FIELD_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except ValueError:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key "
            "(32 url-safe base64-encoded bytes; make one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)."
        ) from None

# Keys findings' pseudonymous patient and resource keys, so diffs match runs across time. Kept apart
# from FIELD_ENCRYPTION_KEYS: rotating those must not turn every finding into a new one.
PSEUDONYM_KEY = env_str("PSEUDONYM_KEY", None if PRODUCTION else _generated["PSEUDONYM_KEY"])
if len(PSEUDONYM_KEY) < 32:
    raise ImproperlyConfigured("PSEUDONYM_KEY must be at least 32 characters of random text.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "csp",
    "django_htmx",
    "template_partials",
    "guardian",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "portal",
    "connections",
    "onboarding",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # The portal's 404 page even with DEBUG on (after CommonMiddleware, which adds a missing slash first).
    "portal.middleware.NotFoundPageMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # django-htmx's request.htmx, plus `Vary: HX-Request` on responses of views that looked at it.
    "portal.middleware.HtmxVaryMiddleware",
    "portal.middleware.SessionLimitsMiddleware",
    "portal.middleware.StaffTwoFactorMiddleware",
    "portal.middleware.NoStoreMiddleware",
    # An API token sent to a page URL: a 401 naming the API route, not a redirect to the login page.
    "portal.middleware.TokenAtPageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.roles",
                "portal.context_processors.inbox",
            ],
            # Every page writes times, durations (`when`, `day`, `duration`) and sentences (`sentence`) the same way.
            "builtins": ["portal.templatetags.times", "portal.templatetags.wording"],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", None if PRODUCTION else f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60 if PRODUCTION else 0, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The demo runs the web server and a worker against one file; WAL and a busy timeout
    # let them take turns instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    # First, so a locked-out account is refused before its password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous visitors hold no object permissions
GUARDIAN_RAISE_403 = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
# The first page after login shows each person what waits on them.
LOGIN_REDIRECT_URL = "my_work"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles") if PRODUCTION else str(VAR_DIR / "static")))
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Outside production, serve static files straight from the source folders (no collectstatic step).
WHITENOISE_USE_FINDERS = not PRODUCTION

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", PRODUCTION) else None
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=300)

# --- Sessions, sign-in and headers (45 CFR 164.312: automatic logoff, person authentication) ---
# SESSION_COOKIE_AGE above is the absolute cap: a session ends that long after login, busy or not.
# SESSION_IDLE_TIMEOUT logs out a session with no request from a person (htmx polling does not count).
SESSION_IDLE_TIMEOUT = env_int("SESSION_IDLE_TIMEOUT", 15 * 60, minimum=60)
SESSION_COOKIE_SAMESITE = "Lax"
# htmx reads the CSRF token from the page (hx-headers on <body>), so no script needs the cookie.
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
# Raw PHI is shown only to someone who typed their password (and second factor) this recently.
REAUTH_MAX_AGE = env_int("REAUTH_MAX_AGE", 5 * 60, minimum=30)
# Tracebacks and error reports never carry secrets, whatever the view forgot to declare: frame locals
# are shown by name and type only, and credential-named fields and query parameters are hidden.
DEFAULT_EXCEPTION_REPORTER_FILTER = "portal.reporting.SecretScrubbingFilter"
DEFAULT_EXCEPTION_REPORTER = "portal.reporting.SecretScrubbingReporter"

# Lockout (django-axes): this many wrong passwords for one user name lock that account.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 30.0, minimum=1.0))
AXES_LOCKOUT_PARAMETERS = ["username"]
# axes.W006 asks for ip_address too. Locking by address would lock out a whole hospital behind one
# NAT address after five typos; the lock here is per account, which rotating user agents or cookies
# (what the warning is about) cannot get around.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AXES_RESET_ON_SUCCESS = True
# JSON 429 for the API, the lockout page for people.
AXES_LOCKOUT_CALLABLE = "portal.account_views.lockout_response"
AXES_VERBOSE = False

# Invitations (portal.people): a link works this many hours after it was sent (or last resent).
INVITATION_TTL_HOURS = env_int("INVITATION_TTL_HOURS", 72, minimum=1)

# Two-factor (django-otp): required for vendor staff, optional for hospital IT (see portal/twofactor.py).
OTP_TOTP_ISSUER = "Onboarding portal"

# Content-Security-Policy (django-csp): no inline script or style anywhere, no eval; htmx is
# configured for it in base.html. The API docs pages widen it for themselves only (portal/api_docs.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # django-rest-knox: hashed tokens that expire, several per person, each revocable.
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's parsers, with JSON nesting capped (a body nested thousands of levels deep is a 400).
    "DEFAULT_PARSER_CLASSES": [
        "portal.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# API tokens (POST /api/v1/auth/token/) end API_TOKEN_TTL seconds after they are issued; a person
# lists and revokes theirs on the account page or at /api/v1/auth/tokens/.
API_TOKEN_TTL = env_int("API_TOKEN_TTL", 24 * 60 * 60, minimum=60)
REST_KNOX = {
    "TOKEN_TTL": timedelta(seconds=API_TOKEN_TTL),
    "AUTO_REFRESH": False,  # a fixed lifetime: using a token does not keep it alive
    "AUTH_HEADER_PREFIX": "Token",  # the header clients already send
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hospital onboarding portal API",
    "DESCRIPTION": (
        "Everything the portal's pages do: tenants and their people, EHR connections, steps and runs, "
        "gates, mappings, validation policies, findings, waivers, diffs and evidence packs. Secrets are "
        "write-only; raw patient data stays on the audited engineer page."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs pages are for signed-in people and API clients only.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from the sidecar package: no CDN, so the docs work on closed networks.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No deep links: Swagger UI draws each one as a link inside the operation's toggle button, a
    # nested control that screen readers cannot reach (axe-core's nested-interactive, WCAG 4.1.2).
    "SWAGGER_UI_SETTINGS": {"deepLinking": False},
    "COMPONENT_SPLIT_REQUEST": True,
    # Two choice sets share the field name "role": name each after its meaning.
    "ENUM_NAME_OVERRIDES": {
        "HospitalRoleEnum": "portal.people.models.HospitalRole",
        "StaffRoleEnum": "portal.people.models.StaffRole",
        "NotificationKindEnum": "portal.notifications.models.NotificationKind",
        "MaintenanceKindEnum": "onboarding.live.models.MaintenanceKind",
        "AlertKindEnum": "onboarding.monitoring.models.AlertKind",
    },
}

# --- The pipeline ---------------------------------------------------------------------------
# Defined before the Celery block because the broker and beat settings are derived from them.
STEP_SOFT_TIME_LIMIT = env_int("STEP_SOFT_TIME_LIMIT", 600, minimum=5)
STEP_TIME_LIMIT = env_int("STEP_TIME_LIMIT", STEP_SOFT_TIME_LIMIT + 60, minimum=10)
# A worker thread refreshes a running step's heartbeat this often, even while the step waits on a
# slow hospital, so only a dead or frozen worker goes silent.
STEP_HEARTBEAT_INTERVAL = env_int("STEP_HEARTBEAT_INTERVAL", 5, minimum=1)
# A step's progress and log lines reach the database at most this often (seconds): a short step
# writes only its claim and its outcome, a long one still shows live progress and notices a cancel.
STEP_PROGRESS_INTERVAL = env_float("STEP_PROGRESS_INTERVAL", 0.5)
# A running step silent for longer lost its worker: the sweep puts it back in the queue (or declares
# it dead after STEP_MAX_DELIVERIES). Four missed heartbeats, so a busy database is not a dead worker.
STEP_HEARTBEAT_TIMEOUT = env_int("STEP_HEARTBEAT_TIMEOUT", 20, minimum=10)
# Beat runs the reaper and the sweep this often; with the timeout above, a run whose whole worker
# was killed is running again within about 35 s.
STEP_SWEEP_INTERVAL = env_int("STEP_SWEEP_INTERVAL", 10, minimum=1)
# A run still queued this long after its task was sent is sent again, in case the message was lost
# and the sweep could not tell from the broker's queue length (a duplicate delivery does nothing).
STEP_REQUEUE_AFTER = env_int("STEP_REQUEUE_AFTER", 60, minimum=5)
# Deliveries (claims by a worker) before a run that keeps losing its worker is declared dead.
STEP_MAX_DELIVERIES = env_int("STEP_MAX_DELIVERIES", 5, minimum=1)
if STEP_HEARTBEAT_TIMEOUT < 2 * STEP_HEARTBEAT_INTERVAL:
    raise ImproperlyConfigured("STEP_HEARTBEAT_TIMEOUT must be at least twice STEP_HEARTBEAT_INTERVAL.")
if STEP_TIME_LIMIT <= STEP_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("STEP_TIME_LIMIT must be longer than STEP_SOFT_TIME_LIMIT.")

# --- Load tests (issue 11) ----------------------------------------------------------------------
# Hard caps that no load-test plan may exceed, whatever is written and approved: a plan above one is
# refused with the cap named, and the load engine holds to them again while it runs.
LOAD_TEST_MAX_RATE = env_float("LOAD_TEST_MAX_RATE", 500.0, minimum=1.0)  # requests per second
LOAD_TEST_MAX_CONCURRENCY = env_int("LOAD_TEST_MAX_CONCURRENCY", 100, minimum=1)  # open connections
LOAD_TEST_MAX_DURATION = env_int("LOAD_TEST_MAX_DURATION", 1800, minimum=1)  # seconds, ramp and steps included
LOAD_TEST_MAX_TOTAL_REQUESTS = env_int("LOAD_TEST_MAX_TOTAL_REQUESTS", 500_000, minimum=1)
# The load_tests queue's own limits: the longest plan the caps allow, plus pulling the records the
# requests are built from and the engine's wait for the last answers, must fit inside the soft one.
LOAD_TEST_SOFT_TIME_LIMIT = env_int("LOAD_TEST_SOFT_TIME_LIMIT", LOAD_TEST_MAX_DURATION + 300, minimum=5)
LOAD_TEST_TIME_LIMIT = env_int("LOAD_TEST_TIME_LIMIT", LOAD_TEST_SOFT_TIME_LIMIT + 60, minimum=10)
if not math.isfinite(LOAD_TEST_MAX_RATE):
    raise ImproperlyConfigured("LOAD_TEST_MAX_RATE must be a finite number of requests per second.")
if LOAD_TEST_TIME_LIMIT <= LOAD_TEST_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("LOAD_TEST_TIME_LIMIT must be longer than LOAD_TEST_SOFT_TIME_LIMIT.")
if LOAD_TEST_SOFT_TIME_LIMIT < LOAD_TEST_MAX_DURATION + 120:
    raise ImproperlyConfigured(
        "LOAD_TEST_SOFT_TIME_LIMIT must be at least LOAD_TEST_MAX_DURATION + 120 s, so the longest plan "
        "allowed, with its set-up and last answers, ends before the limit stops it."
    )
# The longest a task of any step queue may run: the broker must not hand one out again before it.
LONGEST_TASK_TIME_LIMIT = max(STEP_TIME_LIMIT, LOAD_TEST_TIME_LIMIT)

# --- Monitoring after go-live (issue 12) -------------------------------------------------------
# Beat hands out the due health checks this often: a check waits at most about this long past its
# due time before it is sent (plus the queue's wait for a worker).
MONITORING_TICK_SECONDS = env_float("MONITORING_TICK_SECONDS", 5.0, minimum=1.0)
# 0: each tenant's policy sets the check interval (minutes). Above 0, every live connection is
# checked this many seconds apart instead: for tests and demos that cannot wait minutes.
MONITORING_CHECK_INTERVAL_SECONDS = env_int("MONITORING_CHECK_INTERVAL_SECONDS", 0, minimum=0)
# The most checks one tick hands out; the rest stay due for the next tick.
MONITORING_DISPATCH_BATCH = env_int("MONITORING_DISPATCH_BATCH", 5000, minimum=1)
# Health checks (the time series behind the SLA figures) are kept this many days, then purged by beat.
MONITORING_CHECK_RETENTION_DAYS = env_int("MONITORING_CHECK_RETENTION_DAYS", 60, minimum=1)
# A check is /metadata and one Patient read through the guarded client (OUTBOUND_DEADLINE each).
MONITORING_CHECK_SOFT_TIME_LIMIT = env_int("MONITORING_CHECK_SOFT_TIME_LIMIT", 100, minimum=5)
MONITORING_CHECK_TIME_LIMIT = env_int("MONITORING_CHECK_TIME_LIMIT", 120, minimum=10)
if MONITORING_CHECK_TIME_LIMIT <= MONITORING_CHECK_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("MONITORING_CHECK_TIME_LIMIT must be longer than MONITORING_CHECK_SOFT_TIME_LIMIT.")
# The hypercare period when the go-live left no end date on the live state.
MONITORING_HYPERCARE_DAYS = env_int("MONITORING_HYPERCARE_DAYS", 30, minimum=1)

# --- Celery -------------------------------------------------------------------------------
# The database is the record of every run; results are never stored in the broker.
CELERY_BROKER_URL = env_str(
    "CELERY_BROKER_URL", None if PRODUCTION else f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}"
)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only after it finished, and a killed worker's task is redelivered:
# the step run's conditional claim makes the second delivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# With no result backend there is no late result to wait for: report a killed pool child after
# 2 s (Celery waits 10 s by default), so its step is put back in the queue at once.
CELERY_WORKER_LOST_WAIT = 2.0
# A step keeps running through a broker outage; its outcome goes to the database, and the message
# Redis may hand out again is a no-op then. Set explicitly because Celery warns about the default.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Celery's Django fixup closes the database connection around every task, so each step paid for a
# new PostgreSQL connection; keep it for 100 tasks instead. A connection that died meanwhile is
# replaced by the engine on first use (onboarding.engine.services._reconnecting).
CELERY_DB_REUSE_MAX = 100
CELERY_TASK_SOFT_TIME_LIMIT = STEP_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = STEP_TIME_LIMIT
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker waits out a Redis outage, however long, instead of exiting after 100 attempts.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task not acknowledged within this many seconds is given to another worker. It must
        # exceed the longest hard time limit of any step queue (a load test's), or every long step
        # would be delivered twice. A killed worker's run does not wait for it: its heartbeat stops
        # and the sweep re-queues it.
        "visibility_timeout": LONGEST_TASK_TIME_LIMIT + 120,
        # Scan for such messages every 10 s instead of every 100 s (kombu's throttle of 10).
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        # Bounded waits on Redis: without them a publish to a hung or unreachable Redis blocks the
        # web request forever. Redis answers in well under a millisecond when it is healthy.
        "socket_connect_timeout": 0.5,
        "socket_timeout": 0.5,
        "socket_keepalive": True,
    }
else:
    # kombu's SQLAlchemy transport hands these options to create_engine, which takes none of ours.
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
# Publishing gives up quickly when the broker is down: two attempts (the second on a fresh
# connection, for a Redis that restarted) of at most 0.5 s each. The row stays queued and the
# sweep sends it, so a person clicking "Start" never waits on a dead broker.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
CELERY_TASK_DEFAULT_QUEUE = "steps"
CELERY_TASK_ROUTES = {
    "onboarding.run_step": {"queue": "steps"},
    "onboarding.run_step.load_tests": {"queue": "load_tests"},
    "onboarding.reap_stale_runs": {"queue": "maintenance"},
    "onboarding.resend_queued_runs": {"queue": "maintenance"},
    "portal.purge_raw_payloads": {"queue": "maintenance"},
    "portal.deliver_notification_email": {"queue": "notifications"},
    "portal.sweep_notification_emails": {"queue": "maintenance"},
    "portal.purge_old_notifications": {"queue": "maintenance"},
    "onboarding.open_go_live_windows": {"queue": "maintenance"},
    # Monitoring (issue 12): one beat task hands out the due checks; the checks have their own queue.
    "onboarding.monitoring.dispatch_checks": {"queue": "maintenance"},
    "onboarding.monitoring.run_check": {"queue": "monitoring"},
    "onboarding.monitoring.dispatch_drift": {"queue": "maintenance"},
    "onboarding.monitoring.run_drift": {"queue": "monitoring"},
    "onboarding.monitoring.purge_checks": {"queue": "maintenance"},
}
# --- Go-live (issue 12) ---------------------------------------------------------------------------
# Beat looks this often (seconds) for go-lives whose change window has opened, and starts them.
GO_LIVE_BEAT_INTERVAL = env_int("GO_LIVE_BEAT_INTERVAL", 30, minimum=1)
# Hypercare after a go-live lasts this many days, then monitoring's handoff to operations.
GO_LIVE_HYPERCARE_DAYS = env_int("GO_LIVE_HYPERCARE_DAYS", 30, minimum=1)
# Pre-flight: the last passed validation may be at most this old; a secret or signing key counts as
# expiring at GO_LIVE_CREDENTIAL_MAX_AGE_DAYS of age, and must have more than the margin left.
GO_LIVE_MAX_VALIDATION_AGE_DAYS = env_int("GO_LIVE_MAX_VALIDATION_AGE_DAYS", 14, minimum=1)
GO_LIVE_CREDENTIAL_MAX_AGE_DAYS = env_int("GO_LIVE_CREDENTIAL_MAX_AGE_DAYS", 365, minimum=1)
GO_LIVE_CREDENTIAL_MARGIN_DAYS = env_int("GO_LIVE_CREDENTIAL_MARGIN_DAYS", 14, minimum=0)
# After the cutover, this many health probes, this many seconds apart, must be green for the step to pass.
GO_LIVE_FIRST_CHECKS = env_int("GO_LIVE_FIRST_CHECKS", 3, minimum=1)
GO_LIVE_FIRST_CHECK_INTERVAL = env_float("GO_LIVE_FIRST_CHECK_INTERVAL", 2.0)
# The product's read API: a service token lasts this many days; the signed mapping is cached this many seconds.
SERVICE_TOKEN_TTL_DAYS = env_int("SERVICE_TOKEN_TTL_DAYS", 365, minimum=1)
READ_API_MAPPING_CACHE_SECONDS = env_float("READ_API_MAPPING_CACHE_SECONDS", 30.0)
# A good token and its connection's live state are kept this long per process (0: read on every
# request). Capped: it is how long another process may serve a token revoked or a go-live rolled back.
READ_API_AUTH_CACHE_SECONDS = env_float("READ_API_AUTH_CACHE_SECONDS", 1.0, maximum=10.0)

# A sweep not run within its interval is dropped (expires): the next one does the same work, and
# a backlog of sweeps after an outage would only repeat it.
_sweep = {"schedule": float(STEP_SWEEP_INTERVAL), "options": {"expires": float(STEP_SWEEP_INTERVAL)}}
CELERY_BEAT_SCHEDULE = {
    "reap-stale-runs": {"task": "onboarding.reap_stale_runs", **_sweep},
    "resend-queued-runs": {"task": "onboarding.resend_queued_runs", **_sweep},
    "purge-raw-payloads": {"task": "portal.purge_raw_payloads", "schedule": 3600.0},
    "sweep-notification-emails": {
        "task": "portal.sweep_notification_emails",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    "purge-old-notifications": {"task": "portal.purge_old_notifications", "schedule": 3600.0},
    # Go-live: one entry for every connection; it starts the go-lives whose window has opened.
    "open-go-live-windows": {
        "task": "onboarding.open_go_live_windows",
        "schedule": float(GO_LIVE_BEAT_INTERVAL),
        "options": {"expires": float(GO_LIVE_BEAT_INTERVAL)},
    },
    "monitoring-dispatch-checks": {
        "task": "onboarding.monitoring.dispatch_checks",
        "schedule": MONITORING_TICK_SECONDS,
        "options": {"expires": MONITORING_TICK_SECONDS},
    },
    "monitoring-dispatch-drift": {
        "task": "onboarding.monitoring.dispatch_drift",
        "schedule": 600.0,
        "options": {"expires": 600.0},
    },
    "monitoring-purge-checks": {"task": "onboarding.monitoring.purge_checks", "schedule": 3600.0},
}

# --- Validation findings (issue 4) -------------------------------------------------------------
# Raw resources behind a failed validation run's findings are kept this many days, encrypted,
# for the engineers' audited drill-down, then purged.
RAW_PAYLOAD_RETENTION_DAYS = env_int("RAW_PAYLOAD_RETENTION_DAYS", 14, minimum=1)

# --- Notifications and email (issue 10) ------------------------------------------------------------
# Emails carry absolute links built on this address: where people reach the portal.
PORTAL_BASE_URL = env_str("PORTAL_BASE_URL", None if PRODUCTION else "http://127.0.0.1:8000").rstrip("/")
if not PORTAL_BASE_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(f"PORTAL_BASE_URL must start with http:// or https://, not {PORTAL_BASE_URL!r}.")
# Django's email backends: the console (emails printed by the worker) in embedded mode, SMTP in
# production. The filebased backend writes one file per email into EMAIL_FILE_PATH.
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 587 if PRODUCTION else 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", PRODUCTION)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Set only one of EMAIL_USE_TLS (STARTTLS, port 587) and EMAIL_USE_SSL (port 465).")
# A hung mail server must not hold a worker: the delivery task's own time limits are longer.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 20, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", None if PRODUCTION else "Onboarding portal <portal@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
if EMAIL_BACKEND == "django.core.mail.backends.filebased.EmailBackend":
    EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "emails"))
# An email whose server answers with a temporary error is tried this many times in all, backing off.
NOTIFICATION_EMAIL_MAX_ATTEMPTS = env_int("NOTIFICATION_EMAIL_MAX_ATTEMPTS", 5, minimum=1)
# Inbox items (and their email records) older than this many days are deleted by beat.
NOTIFICATION_RETENTION_DAYS = env_int("NOTIFICATION_RETENTION_DAYS", 60, minimum=1)

# --- Outbound HTTP to hospitals ---------------------------------------------------------------
# host:port pairs that may be reached although loopback/private: the sandbox hospitals only.
OUTBOUND_ALLOWLIST = env_list(
    "OUTBOUND_ALLOWLIST", "" if PRODUCTION else "127.0.0.1:8101,127.0.0.1:8102,127.0.0.1:8103"
)
OUTBOUND_CONNECT_TIMEOUT = env_float("OUTBOUND_CONNECT_TIMEOUT", 5.0)
OUTBOUND_READ_TIMEOUT = env_float("OUTBOUND_READ_TIMEOUT", 15.0)
OUTBOUND_DEADLINE = env_float("OUTBOUND_DEADLINE", 30.0)
OUTBOUND_MAX_RESPONSE_BYTES = env_int("OUTBOUND_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, minimum=1024)
OUTBOUND_MAX_ATTEMPTS = env_int("OUTBOUND_MAX_ATTEMPTS", 3, minimum=1)

# --- Pull limits: what a connection may agree with its hospital -------------------------------
# Customer success sets each connection's concurrency and rate (connections.EHRConnection); these
# are the ceilings no connection may go past, whatever was agreed.
PULL_MAX_CONCURRENCY = env_int("PULL_MAX_CONCURRENCY", 16, minimum=1)
PULL_MAX_RATE = env_float("PULL_MAX_RATE", 50.0)
# Patients pulled ahead of the checks, per concurrent request: the most a pull holds in memory.
PULL_WINDOW_PER_REQUEST = env_int("PULL_WINDOW_PER_REQUEST", 4, minimum=1)
# A bulk export's status is polled no faster than this, whatever Retry-After says.
BULK_MIN_POLL_S = env_float("BULK_MIN_POLL_S", 0.5)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"plain_refusals": {"()": "portal.reporting.PlainRefusals"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # axes logs every successful login at INFO; the audit trail records logins already.
        "axes": {"level": "WARNING"},
        # A 403 is logged as one line, without the PermissionDenied traceback.
        "django.request": {"filters": ["plain_refusals"]},
    },
}
