"""API tokens: issued, listed and revoked here, stored by django-rest-knox (only a hash is kept).

A token ends ``API_TOKEN_TTL`` seconds after it is issued. A person may hold several (one per API
client) and sees and revokes their own on the account page or at ``/api/v1/auth/tokens/``; nobody
else's token is ever found (404). ``revoke_all_tokens`` ends every token of a person who is removed
or deactivated. Tokens are named by ``token_id``, a prefix of the stored hash, which says nothing
about the token itself.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.signals import post_save
from django.http import Http404, HttpRequest
from django.utils import timezone
from knox.models import AuthToken

from portal import audit
from portal.access import AuthUser, User

TOKEN_ID_LENGTH = 16


def token_id(token: AuthToken) -> str:
    """The public name of a token: the start of its SHA-512 hash (the token cannot be derived from it)."""
    return str(token.digest)[:TOKEN_ID_LENGTH]


def issue_token(*, user: AuthUser, request: HttpRequest | None = None) -> tuple[AuthToken, str]:
    """A new token for the person, and its key, which is shown this once and never stored."""
    with transaction.atomic():
        token, key = AuthToken.objects.create(user=user)
        audit.record(
            action="auth.api_token_issued",
            actor=user,
            tenant=audit.home_tenant(user),
            request=request,
            detail={"token": token_id(token), "expires_at": token.expiry.isoformat() if token.expiry else None},
        )
    return token, key


def live_tokens(user: User) -> QuerySet[AuthToken]:
    """The person's tokens that have not expired, newest first."""
    if not user.is_authenticated:
        return AuthToken.objects.none()
    live = Q(expiry__isnull=True) | Q(expiry__gt=timezone.now())
    return AuthToken.objects.filter(live, user_id=user.pk).order_by("-created")


def get_own_token(user: User, token: str) -> AuthToken:
    """One of the person's live tokens by its token_id; 404 for anyone else's, as for a missing one."""
    if len(token) != TOKEN_ID_LENGTH:
        raise Http404("No such token.")
    found = list(live_tokens(user).filter(digest__startswith=token.lower())[:2])
    if len(found) != 1:
        raise Http404("No such token.")
    return found[0]


def revoke_token(*, user: AuthUser, token: AuthToken, request: HttpRequest | None = None) -> None:
    """End one of the person's own tokens at once."""
    with transaction.atomic():
        AuthToken.objects.filter(digest=token.digest, user_id=user.pk).delete()
        audit.record(
            action="auth.api_token_revoked",
            actor=user,
            tenant=audit.home_tenant(user),
            request=request,
            detail={"token": token_id(token), "reason": "revoked by its owner"},
        )


def revoke_all_tokens(user: Any, *, actor: User | None = None, request: HttpRequest | None = None) -> int:
    """End every API token of a person (removed, deactivated, or on request); the number ended.

    Whatever token model is in use is deleted here, so callers (removing a person) need not know it.
    """
    with transaction.atomic():
        count, _ = AuthToken.objects.filter(user_id=user.pk).delete()
        if count:
            audit.record(
                action="auth.api_tokens_revoked_all",
                actor=actor,
                tenant=audit.home_tenant(user),
                obj=user,
                request=request,
                detail={"tokens": count, "user": user.get_username()},
            )
    return count


def on_user_saved(sender: Any, instance: Any, **_: Any) -> None:
    """A deactivated person keeps no API token (knox refuses them anyway; this deletes them)."""
    if not instance.is_active and AuthToken.objects.filter(user_id=instance.pk).exists():
        revoke_all_tokens(instance)


def connect() -> None:
    """Wire the deactivation handler (idempotent thanks to the dispatch uid)."""
    post_save.connect(on_user_saved, sender=get_user_model(), dispatch_uid="portal.tokens.deactivated")
