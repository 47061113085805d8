"""WSGI entry point for gunicorn in production."""

import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()

# Everything loaded so far (Django, the apps, their modules) lives as long as the process. Frozen,
# the collector no longer walks it in each full collection: those walks, some milliseconds each,
# fell inside requests (the read API's slowest ones, measured by benchmarks.readapi).
gc.collect()
gc.freeze()
