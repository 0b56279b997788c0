"""Who may do what: the one set of authorization rules every route, page and socket asks.

Pure functions over facts the caller has already read: the *actor* (a staff account or
the principal of a request: username, role, org, disabled) and the *target* (the org
chain of the resource, its owner, the deployment root). Nothing here touches Redis,
HTTP or the meeting platforms, so the rules can be read, and tested, on their own
(tests/gateway/test_authz_rules.py); which route asks which action is tested against the
running app (tests/gateway/test_authz_routes.py).

The org tree (province department -> district office -> school) is described in
gateway/staff.py. A *scope* grant means: the actor's org is the target's org or one of
its ancestors (``Target.org_chain``, as returned by ``StaffStore.org_ancestors``). An
*owner* grant means: the actor owns the target (the teacher of a class, the reporter of
an incident). A *deployment* grant means: the actor's org is the deployment root.

A disabled account may do nothing at all, whatever its role.

The command line (``classguard ...``, gateway/cli.py) is not a staff member: it acts as
the operator who holds the deployment's data directory and Redis, and asks nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol


class Actor(Protocol):
    """What the rules read about who is acting (``staff.User``, ``auth.Principal``)."""

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def org(self) -> str: ...

    @property
    def disabled(self) -> bool: ...


class Action(StrEnum):
    VIEW_CLASS = "view_class"  # its state, roster, links, audit trail; report on it
    HOST_CLASS = "host_class"  # admit, remove, ban, lock, end; roster, links, policy
    CREATE_CLASS = "create_class"
    EDIT_INCIDENT = "edit_incident"  # title and description of an incident
    DECIDE_INCIDENT = "decide_incident"  # close or reopen an incident
    EXPORT_EVIDENCE = "export_evidence"  # an evidence bundle discloses personal data
    READ_AUDIT = "read_audit"  # events of the org subtree, proofs, verification
    READ_DEPLOYMENT_AUDIT = "read_deployment_audit"  # events that belong to no org
    ERASE_PERSONAL_DATA = "erase_personal_data"
    MANAGE_ORG_BANS = "manage_org_bans"
    READ_ORG_POLICY = "read_org_policy"
    SET_ORG_POLICY = "set_org_policy"
    BAN_ORG_WIDE = "ban_org_wide"  # a host action that bans (or unbans) across the org
    MANAGE_STAFF = "manage_staff"  # accounts: create, disable, enable, reset password
    MANAGE_ORGS = "manage_orgs"
    ROTATE_KEYS = "rotate_keys"  # join-token keys serve every school: deployment only
    HANDLE_REPORT = "handle_report"  # see a student's or parent's report; act on it


@dataclass(frozen=True, slots=True)
class Rule:
    scope: frozenset[str] = frozenset()  # roles granted within their org subtree
    owner: frozenset[str] = frozenset()  # roles granted on what they own
    deployment: frozenset[str] = frozenset()  # roles granted at the deployment root


def _roles(*names: str) -> frozenset[str]:
    return frozenset(names)


# NOTE: IT staff read a class, its trail and its bans but never act as its host: a
# compromised IT account must not be able to let people into lessons.
RULES: dict[Action, Rule] = {
    Action.VIEW_CLASS: Rule(scope=_roles("it", "admin"), owner=_roles("teacher")),
    Action.HOST_CLASS: Rule(scope=_roles("admin"), owner=_roles("teacher")),
    Action.CREATE_CLASS: Rule(scope=_roles("teacher", "admin")),
    Action.EDIT_INCIDENT: Rule(scope=_roles("admin"), owner=_roles("teacher", "it", "admin")),
    Action.DECIDE_INCIDENT: Rule(scope=_roles("admin")),
    Action.EXPORT_EVIDENCE: Rule(scope=_roles("admin")),
    Action.READ_AUDIT: Rule(scope=_roles("it", "admin")),
    Action.READ_DEPLOYMENT_AUDIT: Rule(deployment=_roles("admin")),
    Action.ERASE_PERSONAL_DATA: Rule(scope=_roles("admin")),
    Action.MANAGE_ORG_BANS: Rule(scope=_roles("it", "admin")),
    Action.READ_ORG_POLICY: Rule(scope=_roles("it", "admin")),
    Action.SET_ORG_POLICY: Rule(scope=_roles("admin")),
    Action.BAN_ORG_WIDE: Rule(scope=_roles("admin")),
    Action.MANAGE_STAFF: Rule(scope=_roles("admin")),
    Action.MANAGE_ORGS: Rule(scope=_roles("admin")),
    Action.ROTATE_KEYS: Rule(deployment=_roles("admin")),
    Action.HANDLE_REPORT: Rule(scope=_roles("admin"), owner=_roles("teacher")),
}


@dataclass(frozen=True, slots=True)
class Target:
    """Facts about what is acted on. ``org_chain``: the resource's org and its ancestors
    (order does not matter); ``owner``: the username that owns it, if anyone does;
    ``deployment_root``: the root org's slug, for deployment-wide actions (None before
    ``classguard init``: nobody then acts for the deployment but the command line)."""

    org_chain: tuple[str, ...] = ()
    owner: str | None = None
    deployment_root: str | None = None

    @classmethod
    def of_org(cls, org_chain: tuple[str, ...] | list[str], *,
               owner: str | None = None) -> Target:
        return cls(org_chain=tuple(org_chain), owner=owner)

    @classmethod
    def deployment(cls, root: str | None) -> Target:
        return cls(deployment_root=root)

    @classmethod
    def own(cls, actor: Actor) -> Target:
        """Something of the actor's own (its org, owned by it): "may this actor do this
        at all?", as the navigation and a page's gate ask before any resource is read."""
        return cls(org_chain=(actor.org,), owner=actor.username)


def allows(actor: Actor, action: Action, target: Target | None = None) -> bool:
    """May ``actor`` do ``action`` on ``target`` (by default on something of its own)?"""
    if actor.disabled:
        return False
    rule = RULES[action]
    t = target if target is not None else Target.own(actor)
    if actor.role in rule.owner and t.owner is not None and t.owner == actor.username:
        return True
    if actor.role in rule.scope and actor.org in t.org_chain:
        return True
    return (actor.role in rule.deployment and t.deployment_root is not None
            and actor.org == t.deployment_root)


def listing_scope(actor: Actor, action: Action) -> Literal["subtree", "owned", "nothing"]:
    """Which resources a listing shows for ``action``: those of the actor's org subtree,
    only those it owns, or nothing (a disabled account, a role without the action)."""
    if actor.disabled:
        return "nothing"
    rule = RULES[action]
    if actor.role in rule.scope:
        return "subtree"
    return "owned" if actor.role in rule.owner else "nothing"


# -- the questions asked most, by name ----------------------------------------------------


def can_view_class(actor: Actor, owner: str, org_chain: tuple[str, ...] | list[str]) -> bool:
    """Teachers: only classes they own. IT staff and administrators: classes whose org
    lies in their own org's subtree."""
    return allows(actor, Action.VIEW_CLASS, Target.of_org(org_chain, owner=owner))


def can_host(actor: Actor, owner: str, org_chain: tuple[str, ...] | list[str]) -> bool:
    """The owning teacher, or an administrator of the class's org subtree."""
    return allows(actor, Action.HOST_CLASS, Target.of_org(org_chain, owner=owner))


def can_read_audit(actor: Actor, org_chain: tuple[str, ...] | list[str]) -> bool:
    """IT staff and administrators whose org is the org of ``org_chain`` or above it."""
    return allows(actor, Action.READ_AUDIT, Target.of_org(org_chain))


def can_export_evidence(actor: Actor, org_chain: tuple[str, ...] | list[str]) -> bool:
    """Administrators of the subtree only: a bundle discloses personal data."""
    return allows(actor, Action.EXPORT_EVIDENCE, Target.of_org(org_chain))

