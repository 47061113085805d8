"""Pages of people: members and invitations of a tenant, accepting an invitation, vendor staff."""

from __future__ import annotations

from django.urls import path

from portal.people import views

urlpatterns = [
    path("t/<uuid:code>/people/", views.tenant_members, name="tenant_members"),
    path("t/<uuid:code>/people/invite/", views.invitation_create, name="invitation_create"),
    path("t/<uuid:code>/people/assign/", views.tenant_staff_assign, name="tenant_staff_assign"),
    path("members/<uuid:code>/role/", views.member_role, name="member_role"),
    path("members/<uuid:code>/remove/", views.member_remove, name="member_remove"),
    path("assignments/<uuid:code>/remove/", views.assignment_remove, name="assignment_remove"),
    path("invitations/<uuid:code>/resend/", views.invitation_resend, name="invitation_resend"),
    path("invitations/<uuid:code>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("invitations/accept/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("staff/", views.staff_list, name="staff_list"),
    path("staff/invite/", views.staff_invite, name="staff_invite"),
    path("staff/<uuid:code>/deactivate/", views.staff_deactivate, name="staff_deactivate"),
]
