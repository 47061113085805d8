"""The Celery application. Configuration comes from Django settings (CELERY_* names).

A worker also checks at start-up that a Redis broker keeps what it is given: without an append-only
file a restart loses every queued task (the sweep sends them again, late), and with an eviction
policy Redis may drop them under memory pressure. It warns; it does not refuse to start.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


def broker_persistence_problems(info: dict[str, Any]) -> list[str]:
    """What in a Redis server's INFO would lose queued tasks, each with the setting that fixes it."""
    problems = []
    if str(info.get("aof_enabled", "0")) != "1":
        problems.append(
            "Redis keeps no append-only file, so a restart loses every queued task until the sweep sends "
            "it again: set `appendonly yes` (with `appendfsync everysec`)."
        )
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        problems.append(
            f"Redis evicts keys when memory is full (maxmemory-policy {policy}), which can drop queued "
            "tasks: set `maxmemory-policy noeviction`."
        )
    return problems


@worker_ready.connect
def check_broker_persistence(**_: Any) -> None:
    """Log a warning per persistence problem of a Redis broker when a worker starts."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        info = {**client.info("persistence"), **client.info("memory")}
    except redis.RedisError as exc:
        logger.warning("Could not read the Redis broker's persistence settings: %s", exc)
        return
    for problem in broker_persistence_problems(info):
        logger.warning(problem)
