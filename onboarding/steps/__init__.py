"""The pipeline's steps, registered in the order they run."""

from __future__ import annotations

from onboarding.steps.base import StepModule
from onboarding.steps.configure import ConfigureStep
from onboarding.steps.golive import GoLiveStep
from onboarding.steps.loadtest import LoadTestStep
from onboarding.steps.map import MapStep
from onboarding.steps.test import TestStep
from onboarding.steps.validate import ValidateStep

PIPELINE: tuple[StepModule, ...] = (
    ConfigureStep(),
    TestStep(),
    MapStep(),
    ValidateStep(),
    LoadTestStep(),
    GoLiveStep(),
)
_BY_KEY = {step.key: step for step in PIPELINE}


def get_step(key: str) -> StepModule:
    """The step module for a key; KeyError for an unknown one."""
    return _BY_KEY[key]


def step_keys() -> list[str]:
    return [step.key for step in PIPELINE]
