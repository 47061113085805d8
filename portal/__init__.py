"""Portal core: settings, the Celery app, tenants, people and roles, access helpers and the audit log."""

from portal.celery import app as celery_app

__all__ = ("celery_app",)
