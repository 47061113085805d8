"""The engineers' review of validation runs: queue, grouped run page, examples, raw JSON, waivers, exports.

Everyone who may see a tenant sees its runs with the same grouping; only engineers see raw JSON
(every view audited) and waive findings; another tenant's run is a 404 for hospital IT.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from connections.models import Vendor
from onboarding.models import Severity
from onboarding.review import services as review
from portal.access import tenants_for
from portal.middleware import api_equivalent, send_to
from portal.reauth import recently_authenticated
from portal.types import HtmxHttpRequest

QUEUE_PAGE_SIZE = 25


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@login_required
@require_GET
def review_queue(request: HtmxHttpRequest) -> HttpResponse:
    """Failed validation runs across the tenants the user may see, filtered and paged."""
    tenants = tenants_for(request.user).order_by("name")
    tenant = request.GET.get("tenant", "")
    filters = review.QueueFilters(
        tenant=tenant if tenant in {str(t.code) for t in tenants} else "",
        vendor=request.GET.get("vendor", "") if request.GET.get("vendor", "") in Vendor.values else "",
        rule=request.GET.get("rule", "")[:64],
        severity=request.GET.get("severity", "") if request.GET.get("severity", "") in Severity.values else "",
        since=_date(request.GET.get("since", "")),
        until=_date(request.GET.get("until", "")),
    )
    page = Paginator(review.failed_runs(request.user, filters), QUEUE_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "filters": filters,
        "tenants": tenants,
        "vendors": Vendor.choices,
        "severities": Severity.choices,
        "rules": review.known_rules(request.user),
        "query": request.GET.urlencode(),
    }
    template = "onboarding/review_queue.html#runs" if request.htmx else "onboarding/review_queue.html"
    return render(request, template, context)


@login_required
@require_GET
def review_run(request: HttpRequest, code: str) -> HttpResponse:
    """One run's findings grouped by rule and path, the diff against the previous run, and actions."""
    run = review.get_validation_run(request.user, code)
    return render(
        request,
        "onboarding/review_run.html",
        {
            "run": run,
            "connection": run.onboarding.connection,
            "tenant": run.onboarding.tenant,
            "groups": review.grouped_findings(run),
            "diff": review.diff_against_previous(run),
            "summary": run.result or {},
            "is_engineer": request.user.has_perm(review.REVIEW_PERM),
            "can_run": request.user.has_perm("onboarding.run_step"),
            "default_expiry": (timezone.localdate() + timedelta(days=30)).isoformat(),
        },
    )


@login_required
@require_GET
def review_group(request: HttpRequest, code: str) -> HttpResponse:
    """A few findings of one group, to drill into (an htmx partial, or a page of its own)."""
    run = review.get_validation_run(request.user, code)
    rule, path = request.GET.get("rule", ""), request.GET.get("path", "")
    context = {
        "run": run,
        "rule": rule,
        "path": path,
        "examples": review.group_examples(run, rule, path),
        "is_engineer": request.user.has_perm(review.REVIEW_PERM),
    }
    return render(request, "onboarding/review_run.html#examples", context)


@login_required
@require_GET
def review_raw(request: HttpRequest, code: str) -> HttpResponse:
    """The resource behind a finding with the offending element highlighted. Engineers only; audited."""
    finding = review.get_finding(request.user, code)
    # Who may see it is settled first (403/404), so only an engineer is ever asked for a password.
    review.ensure_raw_viewable(user=request.user, finding=finding)
    if not recently_authenticated(request):
        return send_to(request, "reauthenticate", message="Confirm your password to see raw patient data.")
    resource = review.view_raw_resource(user=request.user, finding=finding, request=request)
    lines = review.highlighted_json(resource, finding.location)
    response = render(
        request,
        "onboarding/review_raw.html",
        {
            "finding": finding,
            "run": finding.run,
            "tenant": finding.run.onboarding.tenant,
            "connection": finding.run.onboarding.connection,
            "lines": lines,
            "highlighted": any(line.highlighted for line in lines),
        },
    )
    # PHI: never kept by a browser or proxy cache.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def review_waive(request: HttpRequest, code: str) -> HttpResponse:
    """An engineer waives a rule at a path for the run's tenant."""
    run = review.get_validation_run(request.user, code)
    expires = _date(request.POST.get("expires_on", ""))
    try:
        if expires is None:
            raise review.WaiverError("Give the date the waiver expires (YYYY-MM-DD).")
        waiver = review.create_waiver(
            user=request.user,
            tenant=run.onboarding.tenant,
            rule=request.POST.get("rule", ""),
            path=request.POST.get("path", ""),
            reason=request.POST.get("reason", ""),
            expires_on=expires,
            run=run,
            request=request,
        )
    except review.WaiverError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"Waived {waiver.rule} at {waiver.path} until {waiver.expires_at:%Y-%m-%d}. Re-run validate to apply it.",
        )
    return redirect(reverse("review_run", kwargs={"code": run.code}) + "#groups")


@login_required
@require_POST
def review_unwaive(request: HttpRequest, code: str) -> HttpResponse:
    """An engineer revokes a waiver shown on the run page; the next validation run counts its findings again."""
    run = review.get_validation_run(request.user, code)
    waiver = review.get_waiver(request.user, request.POST.get("waiver", ""))
    if waiver.tenant_id != run.onboarding.tenant_id:
        # A waiver of another tenant is not on this run's page: the same 404 as a missing one.
        raise Http404("No such waiver.")
    try:
        review.revoke_waiver(user=request.user, waiver=waiver, reason=request.POST.get("reason", ""), request=request)
    except review.WaiverError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"Revoked the waiver of {waiver.rule} at {waiver.path}. Re-run validate to count its findings."
        )
    return redirect(reverse("review_run", kwargs={"code": run.code}) + "#groups")


@api_equivalent("api_run_export_csv")
@login_required
@require_GET
def review_export_csv(request: HttpRequest, code: str) -> StreamingHttpResponse:
    """The run's findings as CSV, streamed; audited."""
    run = review.get_validation_run(request.user, code)
    review.record_export(user=request.user, run=run, fmt="csv", request=request)
    response = StreamingHttpResponse(review.export_csv(run), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="validation-{run.code}.csv"'
    return response


@api_equivalent("api_run_export")
@login_required
@require_GET
def review_export_json(request: HttpRequest, code: str) -> JsonResponse:
    """The run, its summary and its findings as JSON; audited."""
    run = review.get_validation_run(request.user, code)
    review.record_export(user=request.user, run=run, fmt="json", request=request)
    response = JsonResponse(review.export_json(run), json_dumps_params={"indent": 1})
    response["Content-Disposition"] = f'attachment; filename="validation-{run.code}.json"'
    return response
