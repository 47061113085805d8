"""The load-test plan's form: what customer success write on the plan page."""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms

from onboarding.loadtest import services
from onboarding.models import LoadMode, LoadTestPlan


class PlanForm(forms.ModelForm):
    """Every plan field, grouped on the page by fieldsets; the service checks the plan as a whole."""

    # A hidden field: the version the person was looking at, so a change made meanwhile is refused.
    seen_version = forms.IntegerField(min_value=0, widget=forms.HiddenInput)

    class Meta:
        model = LoadTestPlan
        fields = list(services.PLAN_FIELDS)
        labels: ClassVar[dict[str, str]] = {
            **{field: services.TYPE_LABELS[name] for name, field in services.WEIGHT_FIELDS.items()},
            "load_mode": "State the load as",
            "target_rate": "Target rate (req/s)",
            "normal_peak": "Normal peak (req/s)",
            "stress_factor": "Stress factor",
            "staircase_start": "First step's rate (req/s)",
            "staircase_step": "Rate added per step (req/s)",
            "staircase_steps": "Number of steps",
            "staircase_step_s": "Seconds per step",
            "ramp_s": "Ramp-up (s)",
            "duration_s": "Duration at the target rate (s)",
            "concurrency": "Connections (concurrency)",
            "sla_p95_ms": "Agreed p95 (ms)",
            "sla_p99_ms": "Agreed p99 (ms)",
            "sla_max_error_pct": "Maximum errors (%)",
            "abort_error_pct": "Abort threshold: stop when errors over 5 s reach (%)",
        }
        help_texts: ClassVar[dict[str, str]] = {
            "load_mode": "Only the fields of the chosen way are used; the others are cleared when you save.",
            "stress_factor": "The target is the normal peak times this factor (2 by default).",
            "staircase_steps": "Each step runs at its rate in turn; the run stops at the first step that misses "
            "the SLA and reports the highest rate that met it.",
            "duration_s": "Not used by a staircase, whose steps set its length.",
            "concurrency": "At most this many requests in flight; more arrivals than free connections are "
            "counted as dropped, never sent late.",
        }
        widgets: ClassVar[dict[str, Any]] = {"load_mode": forms.RadioSelect}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("sla_p95_ms", "sla_p99_ms", "sla_max_error_pct"):
            self.fields[name].required = True
        mode = self.fields["load_mode"]
        assert isinstance(mode, forms.ChoiceField)
        mode.choices = [(value, label) for value, label in LoadMode.choices]
