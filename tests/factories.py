"""factory_boy factories for the portal's models."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from connections.models import EHRConnection
from portal.models import Tenant

DEFAULT_PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.PostGenerationMethodCall("set_password", DEFAULT_PASSWORD)

    @factory.post_generation
    def groups(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create and extracted:
            for name in extracted:
                self.groups.add(Group.objects.get(name=name))
        self.save()


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Hospital {n:04d}")
    timezone = "America/Chicago"


class ConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EHRConnection

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Connection {n}")
    vendor = "generic"
    base_url = "https://fhir.example.org/fhir"
    auth_method = "none"


def sign_mapping_off(*, cs: Any, it: Any, mapping: Any, comment: str = "ok") -> Any:
    """Customer success request the mapping's sign-off and hospital IT approve it, as the gate wants."""
    from onboarding.gates import services as gates
    from onboarding.mapping.services import SIGN_OFF_GATE

    approval = gates.request_approval(user=cs, onboarding=mapping.onboarding, gate_key=SIGN_OFF_GATE)
    return gates.decide(user=it, approval=approval, decision="approved", comment=comment)
