"""Every Redis key name of the gateway, in one place.

Every name starts with the deployment's prefix (``Settings.redis_prefix``). Keys of one
class share the hash tag ``{c:<class_id>}`` and the keys of one incident ``{i:<id>}``,
so multi-key scripts also run on Redis Cluster; staff organisations share ``{org}`` and
login throttles ``{login}``.

The audit log's keys (``<prefix>audit:...``) are named in audit/store.py (``AuditKeys``,
re-exported here), because ``audit`` never imports the gateway.
"""

from __future__ import annotations

from audit.store import AuditKeys


class Keys:
    """Key names of classes and everything a class holds (gateway/stores/)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def c(self, class_id: str, suffix: str) -> str:
        return f"{self.p}{{c:{class_id}}}:{suffix}"

    def meta(self, cid: str) -> str:
        return self.c(cid, "meta")

    def roster(self, cid: str) -> str:
        return self.c(cid, "roster")

    def links(self, cid: str) -> str:  # student -> current jti
        return self.c(cid, "links")

    def jtis(self, cid: str) -> str:  # jti -> link record json
        return self.c(cid, "jtis")

    def revoked(self, cid: str) -> str:  # set of revoked jtis
        return self.c(cid, "revoked")

    def bind(self, cid: str) -> str:  # student -> the device their link is bound to
        return self.c(cid, "bind")

    def rebinds(self, cid: str) -> str:
        return self.c(cid, "rebinds")

    def released(self, cid: str) -> str:  # student -> devices bound to their revoked links
        return self.c(cid, "released")

    def device_resets(self, cid: str) -> str:  # student -> when the host reset their device
        return self.c(cid, "device_resets")

    def last_ip(self, cid: str) -> str:  # student -> their last address (a day)
        return self.c(cid, "last_ip")

    def waiting(self, cid: str) -> str:
        return self.c(cid, "waiting")

    def admitted(self, cid: str) -> str:
        return self.c(cid, "admitted")

    def removed(self, cid: str) -> str:
        return self.c(cid, "removed")

    def denied(self, cid: str) -> str:
        return self.c(cid, "denied")

    def tickets_by_student(self, cid: str) -> str:
        return self.c(cid, "tk_by")

    def ticket(self, cid: str, rand: str) -> str:
        return self.c(cid, f"t:{rand}")

    def nonce(self, cid: str, rand: str) -> str:
        return self.c(cid, f"go:{rand}")

    def ticket_sockets(self, cid: str, rand: str) -> str:  # socket id -> opened at
        return self.c(cid, f"ws:{rand}")

    def bans(self, cid: str) -> str:
        return self.c(cid, "bans")

    def org_bans(self, org: str) -> str:
        return f"{self.p}bans:org:{org}"

    def hosts(self, cid: str) -> str:
        return self.c(cid, "hosts")

    def once(self, cid: str, name: str) -> str:  # "first caller in a while" markers
        return self.c(cid, f"once:{name}")

    def counter(self, cid: str, name: str) -> str:  # a class's fixed-window counter
        return self.c(cid, f"n:{name}")

    def alerts(self, cid: str) -> str:  # id -> alert json, "<id>:n" count, "<id>:last"
        return self.c(cid, "al:items")

    def alert_order(self, cid: str) -> str:  # id -> time of the latest occurrence
        return self.c(cid, "al:order")

    def alert_kind(self, cid: str, kind: str) -> str:  # the same, for one kind
        return self.c(cid, f"al:k:{kind}")

    def code(self, code_hash: str) -> str:
        return f"{self.p}code:{code_hash}"

    def device_entered(self, device: str) -> str:  # the last ticket this device entered by
        return f"{self.p}dev:{device}:entered"

    def owner_classes(self, username: str) -> str:
        return f"{self.p}classes:owner:{username}"

    def org_classes(self, org: str) -> str:
        return f"{self.p}classes:org:{org}"

    def refusals(self, name: str, cid: str | None = None) -> str:
        """A window of counted refusals (in the class's hash slot when it names one)."""
        return self.c(cid, f"rla:{name}") if cid else f"{self.p}rla:{name}"

    def ratelimit(self, name: str) -> str:
        return f"{self.p}rl:{name}"

    def outbox(self, cid: str) -> str:  # audit records written with the change (audit.outbox)
        return self.c(cid, "audit:outbox")

    # --- channels (pub/sub, gateway/bus.py) -------------------------------------------

    def bus(self) -> str:  # class events for every process
        return f"{self.p}bus"

    def revoke(self) -> str:  # staff sessions and tokens revoked (gateway/staff.py)
        return f"{self.p}revoke"

    # --- organisations (gateway/policy_io.py) -----------------------------------------

    def org_policy(self, org: str) -> str:
        return f"{self.p}orgpolicy:{org}"

    # --- class rules (gateway/class_rules.py) -----------------------------------------

    def org_rules(self, org: str) -> str:  # the org's rules record (json)
        return f"{self.p}orgrules:{org}"

    def class_rules(self, cid: str) -> str:  # the class's own rules record (json)
        return self.c(cid, "rules")

    def rules_ack(self, cid: str) -> str:  # student -> rules version acknowledged
        return self.c(cid, "rules_ack")

    def rules_ack_ref(self, cid: str, nonce: str) -> str:  # one-use acknowledgment form
        return self.c(cid, f"rules_ref:{nonce}")

    # --- presence reconciler (gateway/presence.py) ------------------------------------

    def presence_classes(self) -> str:  # class id -> when to stop reconciling it
        return f"{self.p}presence:classes"

    def presence_lease(self) -> str:  # the reconciler's leader lease (audit/lease.py)
        return f"{self.p}presence:lease"

    def room_index(self, kind: str, room_key: str) -> str:  # the class of a platform's room
        return f"{self.p}presence:{kind}_room:{room_key}"

    def evict_failed(self, cid: str, upstream_id: str) -> str:
        return f"{self.p}presence:evict_failed:{{c:{cid}}}:{upstream_id}"

    def presence_seen(self, cid: str, upstream_id: str) -> str:
        return f"{self.p}presence:seen:{{c:{cid}}}:{upstream_id}"

    def attendance_reports(self, cid: str) -> str:  # attendance reports already read
        return f"{self.p}presence:reports:{{c:{cid}}}"

    # --- demo (gateway/demo.py) -------------------------------------------------------

    def demo_class(self) -> str:  # the demo's class, reused by a restart
        return f"{self.p}demo:class"

    def demo_janus_ws(self) -> str:
        return f"{self.p}demo:janus_ws"


class StaffKeys:
    """Staff accounts, sessions, API tokens and organisations (gateway/staff.py) and
    login throttles (gateway/staff_regulation.py)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def org(self, slug: str) -> str:
        return f"{self.p}staff:{{org}}:o:{slug}"

    def children(self, slug: str) -> str:  # an organisation's child organisations
        return f"{self.p}staff:{{org}}:c:{slug}"

    def all_orgs(self) -> str:
        return f"{self.p}staff:{{org}}:all"

    def root(self) -> str:  # the deployment's root organisation
        return f"{self.p}staff:{{org}}:root"

    def users(self) -> str:
        return f"{self.p}staff:users"

    def user(self, username: str) -> str:
        return f"{self.p}staff:user:{username}"

    def session(self, sid_hash: str) -> str:
        return f"{self.p}staff:session:{sid_hash}"

    def user_sessions(self, username: str) -> str:
        return f"{self.p}staff:user_sessions:{username}"

    def api_token(self, token_id: str) -> str:
        return f"{self.p}staff:apitoken:{token_id}"

    def user_tokens(self, username: str) -> str:
        return f"{self.p}staff:user_tokens:{username}"

    def user_failed(self, username: str) -> str:
        return f"{self.p}staff:user_failed:{username}"

    def user_failed_n(self, username: str) -> str:
        return f"{self.p}staff:user_failed_n:{username}"

    def login(self, kind: str, digest: str) -> str:
        """A login throttle's base name (``:f`` failures, ``:b`` ban); ``digest`` hashes
        the username or address, so attacker-chosen text never appears in key names."""
        return f"{self.p}staff:{{login}}:{kind}:{digest}"


class IncidentKeys:
    """Incident reports and their attachments (gateway/incidents.py)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def item(self, iid: str, suffix: str) -> str:  # one incident's keys share {i:<id>}
        return f"{self.p}{{i:{iid}}}:{suffix}"

    def of_org(self, org: str) -> str:
        return f"{self.p}incidents:org:{org}"

    def of_class(self, cid: str) -> str:
        return f"{self.p}incidents:class:{cid}"

    def held(self) -> str:  # incidents under legal hold
        return f"{self.p}incidents:held"

    def usage(self, org: str) -> str:  # attachment bytes an organisation stores
        return f"{self.p}incidents:usage:{org}"


class NotifyKeys:
    """The incident notification jobs (gateway/notify.py); one hash tag ``{notify}`` so
    its scripts stay on one Cluster slot."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def due(self) -> str:  # job id -> due time
        return f"{self.p}{{notify}}:due"

    def jobs(self) -> str:  # job id -> job json
        return f"{self.p}{{notify}}:jobs"

    def levels(self, iid: str) -> str:  # levels already queued for an incident
        return f"{self.p}{{notify}}:levels:{iid}"

    def first(self, iid: str) -> str:  # when an incident's first email went out
        return f"{self.p}{{notify}}:first:{iid}"

    def log(self, iid: str) -> str:  # results shown on the incident page
        return f"{self.p}{{notify}}:log:{iid}"


class MfaKeys:
    """Second factors, pending sign-ins and staff session details (gateway/mfa.py)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def _k(self, *parts: str) -> str:
        return f"{self.p}mfa:" + ":".join(parts)

    def totp(self, username: str) -> str:
        return self._k("totp", username)

    def totp_step(self, username: str) -> str:  # the last TOTP step accepted
        return self._k("totp_step", username)

    def recovery(self, username: str) -> str:
        return self._k("recovery", username)

    def recovery_key(self) -> str:  # the HMAC key of recovery codes, sealed
        return self._k("recovery_key")

    def webauthn(self, username: str) -> str:
        return self._k("webauthn", username)

    def challenge(self, purpose: str, subject: str) -> str:
        return self._k("challenge", purpose, subject)

    def pending(self, token_hash: str) -> str:  # a sign-in whose first factor passed
        return self._k("pending", token_hash)

    def fresh(self, sid_hash: str) -> str:  # when a session last proved a second factor
        return self._k("fresh", sid_hash)

    def fail(self, username: str) -> str:
        return self._k("fail", username)

    def policy(self, org: str) -> str:
        return self._k("policy", org)

    def session(self, sid_hash: str) -> str:
        return self._k("session", sid_hash)


class OidcKeys:
    """OpenID Connect providers, account links and sign-ins under way (gateway/oidc.py)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def _k(self, rest: str) -> str:
        return f"{self.p}staff:oidc:{rest}"

    def org(self, slug: str) -> str:  # the org's provider settings
        return self._k(f"org:{slug}")

    def domain(self, domain: str) -> str:  # the org whose staff use this email domain
        return self._k(f"domain:{domain}")

    def email(self, address: str) -> str:  # the account made for this email address
        return self._k(f"email:{address}")

    def subject(self, digest: str) -> str:  # the account linked to (issuer, subject)
        return self._k(f"sub:{digest}")

    def state(self, state: str) -> str:  # one sign-in under way
        return self._k(f"state:{state}")

    def nonce(self, digest: str) -> str:  # a nonce already used
        return self._k(f"nonce:{digest}")

    def cached(self, kind: str, digest: str) -> str:  # "disc" or "jwks" of a provider URL
        return self._k(f"{kind}:{digest}")



class ReportKeys:
    """Problems reported by students and parents (gateway/stores/reports.py)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def item(self, rid: str) -> str:  # the report: "body" json, "decided" claim, "decision"
        return f"{self.p}{{r:{rid}}}:item"

    def of_org(self, org: str) -> str:  # report id -> when it was made
        return f"{self.p}reports:org:{org}"

    def of_class(self, cid: str) -> str:
        return f"{self.p}reports:class:{cid}"


__all__ = ["AuditKeys", "IncidentKeys", "Keys", "MfaKeys", "NotifyKeys", "OidcKeys",
           "ReportKeys", "StaffKeys"]
