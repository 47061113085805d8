"""Settings for the fault suite's worker and beat processes: the test settings plus the fault steps.

Every Celery and pipeline setting is the one the project ships, except where a scenario starts its
worker with FAULTS_VISIBILITY_TIMEOUT (scenario 5 says which figure differs and why).
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import CELERY_BROKER_TRANSPORT_OPTIONS

# Imported by the worker at start-up, so the misbehaving steps are registered there too.
CELERY_IMPORTS = ("tests.faults.steps",)

if os.environ.get("FAULTS_VISIBILITY_TIMEOUT"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **CELERY_BROKER_TRANSPORT_OPTIONS,
        "visibility_timeout": int(os.environ["FAULTS_VISIBILITY_TIMEOUT"]),
    }
