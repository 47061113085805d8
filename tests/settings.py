"""Test settings: the production stack's real parts (PostgreSQL, Redis), fixed test keys.

Variables already set in the environment win, so CI or a developer can point elsewhere.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/portal")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
# A fixed Fernet key so tests can check what is stored; never used outside tests.
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "M0n0dLBgZ3O3mDgGdxvWkB2Q9-8-Y0p7Q1qJd1Jd0Vw=")
os.environ.setdefault("PSEUDONYM_KEY", "test-pseudonym-key-not-for-production-0123456789")
os.environ.setdefault("PORTAL_VAR_DIR", os.path.join(tempfile.gettempdir(), "portal-test-var"))
# Playwright's sync API runs an event loop in the test thread; the ORM calls in those tests are
# still synchronous, so Django's guard against async misuse would be a false alarm there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from portal.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests only
