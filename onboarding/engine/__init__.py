"""The pipeline engine: legal moves of step runs, their Celery tasks, the pipeline pages and API."""
