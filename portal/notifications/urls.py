"""Pages of the inbox and of notification preferences."""

from __future__ import annotations

from django.urls import path

from portal.notifications import views

urlpatterns = [
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/read-all/", views.notifications_read_all, name="notifications_read_all"),
    path("inbox/<uuid:code>/read/", views.notification_read, name="notification_read"),
    path("account/notifications/", views.notification_preferences, name="notification_preferences"),
]
