"""The authorization rules (gateway/authz.py) on their own: pure, no Redis.

Which route asks which action is tested against the running app in
tests/gateway/test_authz_routes.py.
"""

from __future__ import annotations

import pytest

from gateway.auth import Principal
from gateway.authz import (
    RULES,
    Action,
    Target,
    allows,
    can_export_evidence,
    can_host,
    can_read_audit,
    can_view_class,
    listing_scope,
)
from gateway.staff import User

ANCESTORS = ["thpt-a", "q1", "hcm"]  # a class of school thpt-a, district q1, province hcm


def u(role: str, org: str, name: str = "someone", disabled: bool = False) -> User:
    return User(name, role, org, disabled=disabled)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("user", "view", "host", "audit", "evidence"),
    [
        (u("teacher", "thpt-a", "owner"), True, True, False, False),
        (u("teacher", "thpt-a", "colleague"), False, False, False, False),
        (u("teacher", "hcm", "province.teacher"), False, False, False, False),
        (u("it", "thpt-a"), True, False, True, False),
        (u("it", "q1"), True, False, True, False),
        (u("it", "q3"), False, False, False, False),
        (u("admin", "hcm"), True, True, True, True),
        (u("admin", "thpt-a"), True, True, True, True),
        (u("admin", "thpt-b"), False, False, False, False),
        (u("admin", "hcm", disabled=True), False, False, False, False),
        (u("teacher", "thpt-a", "owner", disabled=True), False, False, False, False),
        (u("it", "thpt-a", disabled=True), False, False, False, False),
    ],
)
def test_class_and_audit_rules(user: User, view: bool, host: bool, audit: bool,
                               evidence: bool) -> None:
    assert can_view_class(user, "owner", ANCESTORS) is view
    assert can_host(user, "owner", ANCESTORS) is host
    assert can_read_audit(user, ANCESTORS) is audit
    assert can_export_evidence(user, ANCESTORS) is evidence


def test_scope_is_the_org_chain_given() -> None:
    # the class's own org counts; an org outside the chain does not
    assert can_view_class(u("it", "thpt-a"), "owner", ["thpt-a"])
    assert not can_view_class(u("it", "thpt-a"), "owner", ["thpt-b", "q1"])
    assert not can_view_class(u("it", "thpt-a"), "owner", [])


def test_a_principal_is_an_actor() -> None:
    """Requests carry a ``Principal``; the same rules read it as they read a ``User``."""
    p = Principal("owner", "teacher", "thpt-a", "session")
    assert can_host(p, "owner", ANCESTORS)
    assert not can_host(Principal("owner", "teacher", "thpt-a", "session", disabled=True),
                        "owner", ANCESTORS)


def test_deployment_actions_need_the_root_admin() -> None:
    for action in (Action.ROTATE_KEYS, Action.READ_DEPLOYMENT_AUDIT):
        assert allows(u("admin", "so-gd"), action, Target.deployment("so-gd"))
        # no root recorded: nobody (deployment-wide actions stay with the command line)
        assert not allows(u("admin", "so-gd"), action, Target.deployment(None))
        assert not allows(u("admin", "so-gd", disabled=True), action, Target.deployment("so-gd"))
        assert not allows(u("it", "so-gd"), action, Target.deployment("so-gd"))
        assert not allows(u("admin", "thpt-a"), action, Target.deployment("so-gd"))
        # a parentless org that is not the root is not the deployment either
        assert not allows(u("admin", "hanoi"), action, Target.deployment("so-gd"))
    # an administrator of a school is not one of the deployment, even on its own things
    assert not allows(u("admin", "thpt-a"), Action.ROTATE_KEYS)
    assert not allows(u("admin", "so-gd"), Action.READ_DEPLOYMENT_AUDIT)
    assert allows(u("admin", "so-gd"), Action.READ_DEPLOYMENT_AUDIT, Target.deployment("so-gd"))


# What each role may do on something of its own (the navigation and page gates ask this).
OWN: dict[str, set[Action]] = {
    "teacher": {Action.VIEW_CLASS, Action.HOST_CLASS, Action.CREATE_CLASS,
                Action.EDIT_INCIDENT, Action.HANDLE_REPORT},
    "it": {Action.VIEW_CLASS, Action.EDIT_INCIDENT, Action.READ_AUDIT,
           Action.MANAGE_ORG_BANS, Action.READ_ORG_POLICY},
    "admin": set(Action) - {Action.READ_DEPLOYMENT_AUDIT, Action.ROTATE_KEYS},
}


@pytest.mark.parametrize("role", sorted(OWN))
def test_what_each_role_may_do_at_all(role: str) -> None:
    user = u(role, "thpt-a")
    assert {a for a in Action if allows(user, a)} == OWN[role]
    assert not any(allows(u(role, "thpt-a", disabled=True), a) for a in Action)


def test_every_action_has_a_rule() -> None:
    assert set(RULES) == set(Action)


def test_incident_edits_belong_to_the_reporter_and_administrators() -> None:
    about = Target.of_org(ANCESTORS, owner="reporter")
    assert allows(u("teacher", "thpt-a", "reporter"), Action.EDIT_INCIDENT, about)
    assert allows(u("it", "q1", "reporter"), Action.EDIT_INCIDENT, about)
    assert not allows(u("it", "q1", "colleague"), Action.EDIT_INCIDENT, about)
    assert allows(u("admin", "hcm"), Action.EDIT_INCIDENT, about)
    assert not allows(u("teacher", "thpt-a", "reporter"), Action.DECIDE_INCIDENT, about)
    assert allows(u("admin", "q1"), Action.DECIDE_INCIDENT, about)


def test_org_wide_bans_are_for_administrators_of_the_subtree() -> None:
    school = Target.of_org(ANCESTORS, owner="owner")
    assert allows(u("admin", "q1"), Action.BAN_ORG_WIDE, school)
    assert not allows(u("admin", "thpt-b"), Action.BAN_ORG_WIDE, school)
    assert not allows(u("teacher", "thpt-a", "owner"), Action.BAN_ORG_WIDE, school)


@pytest.mark.parametrize(("user", "scope"), [
    (u("teacher", "thpt-a"), "owned"),
    (u("it", "thpt-a"), "subtree"),
    (u("admin", "thpt-a"), "subtree"),
    (u("admin", "thpt-a", disabled=True), "nothing"),
])
def test_listing_scope(user: User, scope: str) -> None:
    assert listing_scope(user, Action.VIEW_CLASS) == scope
