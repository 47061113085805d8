"""Request-wide safety: session limits, the staff second factor, no caching of pages, Vary for htmx.

Each is a middleware so a view added later is covered without remembering a decorator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect
from django.urls import NoReverseMatch, is_valid_path, reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from portal import twofactor

Handler = Callable[[HttpRequest], HttpResponseBase]

# Session keys: when the person logged in, and when they last did something themselves.
LOGIN_AT = "portal_login_at"
SEEN_AT = "portal_seen_at"
# Writing the session on every request would cost a database write per htmx poll; this is coarse
# enough to be cheap and fine enough for a timeout counted in minutes.
SEEN_AT_RESOLUTION = 15

# Views an authenticated but not yet second-factor-verified staff member may reach.
TWO_FACTOR_OPEN_VIEWS = frozenset({"two_factor_verify", "two_factor_setup", "logout", "login"})


def is_api_request(request: HttpRequest) -> bool:
    """API callers get status codes and JSON, never a redirect to an HTML page."""
    return request.path_info.startswith("/api/")


def is_htmx_request(request: HttpRequest) -> bool:
    # Read from the header, not request.htmx, so these checks never add `Vary: HX-Request`.
    return request.headers.get("HX-Request") == "true"


def send_to(request: HttpRequest, url_name: str, *, message: str) -> HttpResponse:
    """Send a person to a page (keeping where they were going); API callers get 401 with the reason."""
    if is_api_request(request):
        return JsonResponse({"detail": message}, status=401)
    if is_htmx_request(request):
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = current.path + (f"?{current.query}" if current.query else "") if current.path else "/"
        return HttpResponseClientRedirect(f"{reverse(url_name)}?{urlencode({'next': back})}")
    return redirect(f"{reverse(url_name)}?{urlencode({'next': request.get_full_path()})}")


class HtmxVaryMiddleware:
    """django-htmx's `request.htmx`, plus `Vary: HX-Request` on responses of views that looked at it.

    A view that answers htmx with a partial and everyone else with the page must say so to caches;
    tracking the look means a new view gets the header without remembering to add it.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        details = _TrackedHtmxDetails(request)
        request.htmx = details  # type: ignore[attr-defined]
        response = self.get_response(request)
        if details.consulted:
            patch_vary_headers(response, ("HX-Request",))
        return response


class _TrackedHtmxDetails(HtmxDetails):
    consulted = False

    def __bool__(self) -> bool:
        self.consulted = True
        return super().__bool__()


class SessionLimitsMiddleware:
    """Automatic logoff: an idle timeout and an absolute cap counted from login.

    Background htmx polling (GET requests made by the page, not the person) does not count as
    activity, or a run page left open would keep a session alive forever.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        user = request.user
        if user.is_authenticated and hasattr(request, "session"):
            reason = expired_because(request, now=time.time())
            if reason:
                return self._log_out(request, reason)
            self._note_activity(request)
        return self.get_response(request)

    def _note_activity(self, request: HttpRequest) -> None:
        if is_htmx_request(request) and request.method == "GET":
            return
        now = time.time()
        if now - float(request.session.get(SEEN_AT, 0)) >= SEEN_AT_RESOLUTION:
            request.session[SEEN_AT] = now

    def _log_out(self, request: HttpRequest, reason: str) -> HttpResponse:
        request.portal_logout_reason = reason  # type: ignore[attr-defined]
        logout(request)
        if reason == "idle":
            minutes = settings.SESSION_IDLE_TIMEOUT // 60
            message = f"You were logged out after {minutes} minutes without activity. Log in again to continue."
        else:
            hours = round(settings.SESSION_COOKIE_AGE / 3600, 1)
            message = f"Sessions last at most {hours:g} hours. Log in again to continue."
        if not is_api_request(request):
            messages.warning(request, message)
        return send_to(request, "login", message=message)


def expired_because(request: HttpRequest, *, now: float) -> str:
    """Why this session must end ("idle" or "absolute"), or "" while it is still good."""
    login_at = request.session.get(LOGIN_AT)
    if login_at is None or now - float(login_at) > settings.SESSION_COOKIE_AGE:
        # A session from before these limits existed has no login time: it ends too.
        return "absolute"
    if now - float(request.session.get(SEEN_AT, login_at)) > settings.SESSION_IDLE_TIMEOUT:
        return "idle"
    return ""


class StaffTwoFactorMiddleware:
    """A signed-in person who needs a second factor and has not given it reaches only its pages."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: object, view_args: object, view_kwargs: object
    ) -> HttpResponse | None:
        user = request.user
        if not user.is_authenticated or twofactor.is_verified(user) or not twofactor.requires_two_factor(user):
            return None
        match = request.resolver_match
        if match is not None and match.view_name in TWO_FACTOR_OPEN_VIEWS:
            return None
        message = "Complete two-factor authentication first."
        if is_api_request(request):
            return JsonResponse({"detail": message + " Log in again in the browser."}, status=403)
        target = "two_factor_verify" if twofactor.has_device(user) else "two_factor_setup"
        return send_to(request, target, message=message)


def api_equivalent(url_name: str) -> Callable[[Any], Any]:
    """Mark a page view that serves data (CSV, JSON) with the API route that serves the same to tokens.

    The route takes the page's URL arguments. ``TokenAtPageMiddleware`` names it to a token caller.
    """

    def mark(view: Any) -> Any:
        view.api_equivalent = url_name
        return view

    return mark


class TokenAtPageMiddleware:
    """An API token sent to a page URL gets a 401 that says where the API serves it, not the login page.

    Pages take a signed-in browser session (with its second factor and CSRF); tokens work under
    ``/api/`` only. A script that fetched an export page with its token used to be redirected to the
    HTML login form, which read as a broken download.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: object, view_args: object, view_kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        scheme = request.headers.get("Authorization", "").split(" ", 1)[0].lower()
        if scheme not in ("token", "bearer") or is_api_request(request) or request.user.is_authenticated:
            return None
        detail = "This is a page of the portal: it takes a signed-in browser session, not an API token."
        body: dict[str, str] = {"code": "page_not_api"}
        target = getattr(view_func, "api_equivalent", None)
        try:
            path = reverse(target, kwargs=view_kwargs) if target else ""
        except NoReverseMatch:
            path = ""
        if path:
            body["api"] = path
            detail += f" The API serves the same at {path}."
        else:
            detail += " The API is under /api/v1/; its reference is at /api/docs/."
        body["detail"] = detail
        response = JsonResponse(body, status=401)
        response["WWW-Authenticate"] = "Token"
        return response


class NoStoreMiddleware:
    """Pages and API answers may carry PHI: no browser or proxy keeps a copy (`Cache-Control: no-store`).

    Static files are answered by WhiteNoise before this runs, so they stay cacheable.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        patch_cache_control(response, no_store=True, private=True)
        return response


class NotFoundPageMiddleware:
    """The portal's own 404 page with DEBUG on too, never Django's technical one.

    With DEBUG off, Django renders templates/404.html itself. With DEBUG on (the embedded demo), it
    answers a 404 with its debug page, which lists every URL pattern of the project: a map of the
    portal for whoever mistypes an address. A view's Http404 is caught here before Django sees it; an
    address that matches no pattern never reaches a view, so its response is replaced. API calls keep
    their JSON answers. Placed after CommonMiddleware, which still adds a missing slash first.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if (
            settings.DEBUG
            and response.status_code == 404
            and not is_api_request(request)
            and not is_valid_path(request.path_info, getattr(request, "urlconf", None))
        ):
            return _not_found(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if settings.DEBUG and isinstance(exception, Http404) and not is_api_request(request):
            return _not_found(request)
        return None


def _not_found(request: HttpRequest) -> HttpResponseBase:
    from django.views.defaults import page_not_found

    # No exception text: a view's "No such connection." would tell a stranger what exists.
    return page_not_found(request, Http404())
