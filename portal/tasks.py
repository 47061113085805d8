"""Celery tasks of the portal core: thin, safe to run twice."""

from __future__ import annotations

from celery import shared_task

from portal import retention


@shared_task(name="portal.purge_raw_payloads", soft_time_limit=300, time_limit=360, ignore_result=True)
def purge_raw_payloads() -> int:
    """Delete raw payloads older than RAW_PAYLOAD_RETENTION_DAYS (beat runs it hourly)."""
    return sum(retention.purge().values())
