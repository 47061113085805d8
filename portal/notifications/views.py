"""The inbox and notification preference pages: a person reaches only their own notifications."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.access import AuthUser
from portal.notifications import services
from portal.notifications.models import AVAILABLE_KINDS, NotificationKind
from portal.notifications.selectors import get_notification_for_user, notifications_for, unread_count
from portal.types import HtmxHttpRequest

INBOX_PAGE_SIZE = 25


def _me(request: HtmxHttpRequest) -> AuthUser:
    # Every view here is behind login_required.
    return cast(AuthUser, request.user)


@login_required
@require_GET
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    """The person's notifications, newest first, unread ones marked; `?unread=1` shows only those."""
    only_unread = request.GET.get("unread") == "1"
    rows = notifications_for(request.user, unread=True if only_unread else None)
    page = Paginator(rows, INBOX_PAGE_SIZE).get_page(request.GET.get("page"))
    context: dict[str, Any] = {"page": page, "only_unread": only_unread, "unread_total": unread_count(request.user)}
    template = "portal/inbox.html#items" if request.htmx else "portal/inbox.html"
    return render(request, template, context)


@login_required
@require_POST
def notification_read(request: HtmxHttpRequest, code: str) -> HttpResponse:
    """Mark one notification read. htmx gets the item back (and the header's count); others the inbox."""
    notification = get_notification_for_user(request.user, code)
    services.mark_read(user=_me(request), notification=notification, request=request)
    if request.htmx:
        context = {"item": notification, "inbox_unread": unread_count(request.user), "oob": True}
        return render(request, "portal/inbox.html#item", context)
    return redirect(_back_to_inbox(request))


@login_required
@require_POST
def notifications_read_all(request: HtmxHttpRequest) -> HttpResponse:
    """Mark every notification of the person read, then show the inbox again."""
    count = services.mark_all_read(user=_me(request), request=request)
    messages.success(request, f"Marked {count} notification{'s' if count != 1 else ''} read.")
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = _back_to_inbox(request)
        return response
    return redirect(_back_to_inbox(request))


def _back_to_inbox(request: HtmxHttpRequest) -> str:
    # Only our own page numbers and filter go back into the URL, never a caller-given address.
    page = request.POST.get("page", "")
    query = []
    if page.isdigit():
        query.append(f"page={page}")
    if request.POST.get("unread") == "1":
        query.append("unread=1")
    return reverse("inbox") + (f"?{'&'.join(query)}" if query else "")


class PreferencesForm(forms.Form):
    """One checkbox per kind of notification: email on or off."""

    def __init__(self, *args: Any, initial_email: dict[str, bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for kind in NotificationKind:
            available = kind.value in AVAILABLE_KINDS
            attrs = {} if available else {"aria-describedby": f"id_{kind.value}-help"}
            self.fields[kind.value] = forms.BooleanField(
                required=False,
                widget=forms.CheckboxInput(attrs=attrs),
                initial=initial_email[kind.value],
                label=kind.label,
                help_text="" if available else "Not available yet: the portal does not send these yet.",
            )

    def email_choices(self) -> dict[str, bool]:
        return {kind: bool(self.cleaned_data.get(kind)) for kind in NotificationKind.values}


@login_required
@require_http_methods(["GET", "POST"])
def notification_preferences(request: HtmxHttpRequest) -> HttpResponse:
    """Email on or off for each kind of notification; the inbox always gets every one."""
    user = _me(request)
    form = PreferencesForm(request.POST or None, initial_email=services.email_preferences(user))
    if request.method == "POST" and form.is_valid():
        services.set_email_preferences(user=user, email=form.email_choices(), request=request)
        messages.success(request, "Your notification settings were saved.")
        return redirect("notification_preferences")
    return render(request, "portal/notification_preferences.html", {"form": form})
