"""Notifications: an in-app inbox per person and emails, once per event, by each person's preferences.

Call `portal.notifications.services.notify` (people with an account) or `notify_address` (an
invitee), with a `NotificationKind` and an idempotency key naming the event. Nothing is imported
here: the models are loaded by portal/models.py, and importing the services from this package's
`__init__` would make that import circular.
"""
