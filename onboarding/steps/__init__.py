"""The pipeline's steps, registered in the order they run."""

from __future__ import annotations

from onboarding.steps.base import NotAvailableStep, StepModule
from onboarding.steps.configure import ConfigureStep
from onboarding.steps.test import TestStep


class MapStep(NotAvailableStep):
    key = "map"
    label = "Map"
    description = "Find identifier systems, extensions and local codes; map them; hospital IT signs off."


class ValidateStep(NotAvailableStep):
    key = "validate"
    label = "Validate"
    description = "Pull patients' data and check structure, US Core must-support, codes and references."


class LoadTestStep(NotAvailableStep):
    key = "load_test"
    label = "Load test"
    description = "Send the production request mix at the agreed rate; report throughput and latency."


class GoLiveStep(NotAvailableStep):
    key = "go_live"
    label = "Go live"
    description = "In the hospital's change window, switch to production and start monitoring."


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
