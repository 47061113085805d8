"""Settings for the onboarding portal, read from the environment.

Two run modes (PORTAL_MODE):
- ``embedded`` (default): SQLite and a broker that lives in a SQLite file, both under ``var/``,
  with development secrets generated once into ``var/``. One command brings the demo up.
- ``production``: every secret and URL must be given; nothing is generated or guessed.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
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
    if path.exists():
        return dict(json.loads(path.read_text()))
    made = {"SECRET_KEY": secrets.token_urlsafe(50), "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    path.write_text(json.dumps(made))
    path.chmod(0o600)
    return made


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

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "guardian",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "portal",
    "connections",
    "onboarding",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
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
            ],
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
LOGIN_REDIRECT_URL = "dashboard"
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

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hospital onboarding portal API",
    "DESCRIPTION": "Tenants, EHR connections, onboardings and step runs. Secrets are write-only.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the sidecar package: no CDN, so the docs work on closed networks.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

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
STEP_SOFT_TIME_LIMIT = env_int("STEP_SOFT_TIME_LIMIT", 600, minimum=5)
STEP_TIME_LIMIT = env_int("STEP_TIME_LIMIT", STEP_SOFT_TIME_LIMIT + 60, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = STEP_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = STEP_TIME_LIMIT
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A task not acknowledged within this many seconds is given to another worker.
        # It must exceed the hard time limit, or a long step would be delivered twice.
        "visibility_timeout": STEP_TIME_LIMIT + 120,
    }
else:
    # kombu's SQLAlchemy transport hands these options to create_engine, which takes none of ours.
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
# Publishing gives up quickly when the broker is down; the row stays queued and the sweep re-sends,
# so a person clicking "Start" never waits on a dead broker.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_TIMEOUT = 2.0
CELERY_TASK_DEFAULT_QUEUE = "steps"
CELERY_TASK_ROUTES = {
    "onboarding.run_step": {"queue": "steps"},
    "onboarding.reap_stale_runs": {"queue": "maintenance"},
    "onboarding.resend_queued_runs": {"queue": "maintenance"},
}
CELERY_BEAT_SCHEDULE = {
    "reap-stale-runs": {"task": "onboarding.reap_stale_runs", "schedule": 30.0},
    "resend-queued-runs": {"task": "onboarding.resend_queued_runs", "schedule": 30.0},
}

# --- The pipeline ---------------------------------------------------------------------------
# A running step writes a heartbeat at least this often; the reaper fails runs silent for longer.
STEP_HEARTBEAT_TIMEOUT = env_int("STEP_HEARTBEAT_TIMEOUT", 120, minimum=10)
# A run still queued after this long was probably never published (crash between commit and send).
STEP_REQUEUE_AFTER = env_int("STEP_REQUEUE_AFTER", 60, minimum=5)
STEP_MAX_DELIVERIES = env_int("STEP_MAX_DELIVERIES", 5, minimum=1)

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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
