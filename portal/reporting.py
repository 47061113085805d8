"""Error reports that never carry secrets, even from views that forgot `@sensitive_*` decorators.

Django's default filter hides only what views declare, and only when DEBUG is off. A connection
form posts `secret`, a service takes `secret=`, and the embedded demo runs with DEBUG on, so this
filter is always active and hides any POST field, local variable or dict key whose name looks
like a credential (the same pattern Django uses for settings).
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from django.http import HttpRequest, QueryDict
from django.views.debug import SafeExceptionReporterFilter


class SecretScrubbingFilter(SafeExceptionReporterFilter):
    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        params = super().get_post_parameters(request)
        if request is None or not isinstance(params, QueryDict):
            return params
        cleansed = params.copy()
        for name in cleansed:
            if self.hidden_settings.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_cleansed_multivaluedict(self, request: HttpRequest, multivaluedict: Any) -> Any:
        # request.POST held in a local variable (e.g. `data = request.POST`) is scrubbed the same way.
        cleansed = super().get_cleansed_multivaluedict(request, multivaluedict).copy()
        for name in cleansed:
            if self.hidden_settings.search(name):
                cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: FrameType) -> Any:
        return [
            (name, self._scrub(name, value)) for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _scrub(self, name: str, value: Any) -> Any:
        if self.hidden_settings.search(name):
            return self.cleansed_substitute
        if isinstance(value, dict):
            # cleaned_data, validated_data, a service's `fields`: hide credential-named keys inside.
            return self.cleanse_setting(name, value)
        return value
