"""The student's way in: credential → policy decision → waiting room or ``/go``.

The decision itself comes from ``policies.evaluate`` (pure); this module gathers its
inputs from Redis, applies the result with atomic scripts, and records it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from policies import evaluate, explain, load_policy
from policies.model import (
    Action,
    Attempt,
    ClassId,
    ClassState,
    Decision,
    Jti,
    Policy,
    Reason,
    Schedule,
    StudentId,
    TokenFacts,
)

from .auditing import milestone
from .class_rules import ClassRules, RulesStore
from .services import Services
from .stores import ClassInfo, Limit, Snapshot, device_hash
from .tokens import peek_claims, verify_join_token
from .useragent import device_hint

log = logging.getLogger("classguard.join")

DEVICE_COOKIE = "cg_dev"

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Used only to run the token rules of the chain for a credential whose class is unknown:
# the chain stops at the token rules before any state is consulted.
_NO_CLASS_STATE = ClassState(
    class_id=ClassId("-"), schedule=Schedule(starts_at=_EPOCH, ends_at=_EPOCH)
)


@lru_cache(maxsize=4096)
def _policy_from_json(text: str) -> Policy:
    # Policies are validated when a class is created or changed; the cache keeps
    # parsing off the hot path while still going through the one validator.
    return load_policy(json.loads(text))


def policy_of(info: ClassInfo) -> Policy:
    """The class's policy, looked up by the JSON it was stored as (no re-encoding)."""
    return _policy_from_json(info.policy_json or json.dumps(info.policy, sort_keys=True))


_STRICT = load_policy({"preset": "strict"})
REPEATED_FAILURES = 5
RATE_LIMIT_AUDIT_WINDOW_S = 60
# The flood detector: verified attempts naming one class within the window. Well above a
# class arriving at the bell (a few per student), well below a leaked sheet hammered.
FLOOD_ATTEMPTS = 300
FLOOD_WINDOW_S = 10
# The same alert within this window is counted, not raised again (see JoinFlow.alert).
ALERT_WINDOW_S = 300


@dataclass(slots=True)
class JoinOutcome:
    decision: Decision
    class_id: str | None = None
    class_title: str | None = None
    student_name: str | None = None
    ticket: str | None = None
    redirect: str | None = None
    new_device_cookie: str | None = None
    retry_after: float = 0.0
    opens_at: str | None = None
    # refused until the class rules are acknowledged: the rules, and the one-use
    # reference of the acknowledgment form (``POST /rules/{ref}``)
    rules: ClassRules | None = None
    rules_ack: str | None = None


def new_device_cookie() -> str:
    return secrets.token_urlsafe(16)  # 128 bits


@lru_cache(maxsize=8192)
def network_of(ip: str) -> str:
    """/24 for IPv4, /64 for IPv6: the unit a single attacker usually controls."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    bits = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@lru_cache(maxsize=8192)
def failure_limits(ip: str) -> tuple[Limit, ...]:
    """The budgets an attempt from ``ip`` is charged when it fails (Limit is frozen).

    NOTE: never charged by a credential that proves itself (a verified current link of
    a roster student, a correct short code, a ticket on its own device, a live /go
    nonce): a school or a carrier puts thousands of students behind one address, and a
    flood from that address must cost the attacker, not them."""
    return (
        Limit(f"ip:{ip}", per_second=5, burst=20),
        Limit(f"net:{network_of(ip)}", per_second=50, burst=200),
        Limit("global", per_second=5000, burst=20000),
    )


@lru_cache(maxsize=65536)
def link_limit(jti: str) -> Limit:
    """The budget of one link, whoever opens it and from wherever."""
    return Limit(f"jti:{jti}", per_second=1, burst=10)


# The link budget of a correct short code: ``link_limit`` with the jti appended in Redis.
CODE_LINK_LIMIT = Limit("jti:", per_second=1, burst=10)


@lru_cache(maxsize=8192)
def code_limits(ip: str) -> tuple[Limit, ...]:
    """The budgets a wrong short code is charged, and checked before any lookup.

    NOTE: the short-code space is guessable only by brute force; limit per source, per
    network and across the whole code space so a distributed attack is slow too. These
    are budgets of their own, not ``failure_limits``: a flood of garbage links from a
    school's address must not shut its students out of code entry as well."""
    return (Limit(f"code:ip:{ip}", per_second=0.2, burst=10),
            Limit(f"code:net:{network_of(ip)}", per_second=2, burst=100),
            Limit("code:space", per_second=20, burst=200))


def _names_a_current_link(snap: Snapshot) -> bool:
    """Whether the claims read before any signature check name the current link of a
    roster student of an existing class."""
    st = snap.state
    return (snap.info is not None and st is not None and snap.link is not None
            and not st.revoked and st.on_roster)


def _proves_a_live_link(snap: Snapshot) -> bool:
    """Whether the claims read before any signature check name the current link of a
    roster student of a class that has not ended (what a verified link must be to be
    charged to its own budgets rather than its source's)."""
    return _names_a_current_link(snap) and snap.state is not None and not snap.state.ended


# The rules of the chain (policies/engine.py DEFAULT_RULES, which runs them first) that
# decide whether a link is a credential at all: its signature, validity period and class,
# that it is still the student's current link, the bans on its source, the roster. The
# rules after them decide an entry (the binding, the host, the schedule), not who holds
# the link.
CREDENTIAL_RULES = frozenset({"token_signature", "token_time", "class_match", "revocation",
                              "rate_limit", "bans", "roster"})


@dataclass(frozen=True, slots=True)
class LinkCheck:
    """A link verified as a join verifies it, without joining (``JoinFlow.check_link``):
    ``refusal`` when it is no credential (answered as a refused join), else its verified
    claims, its class and its student."""

    refusal: JoinOutcome | None = None
    facts: TokenFacts | None = None
    info: ClassInfo | None = None
    student_name: str | None = None


class JoinFlow:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    @property
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.svc.clock(), UTC)

    async def charge_failure(self, ip: str, *, via: str = "link", user_agent: str = "",
                             metric: str = "join") -> float:
        """Charge a failed attempt to its source's budgets (``failure_limits``); seconds
        to wait when they are drained (the attempt is then refused as rate-limited, and
        the refusal counted into the aggregated audit event), else 0.0."""
        wait, limit = await self.svc.store.rate_limit_check(failure_limits(ip))
        if wait > 0:
            self.svc.metrics.rate_limited.labels(metric).inc()
            await self.audit_rate_limited(ip, limit, via=via, user_agent=user_agent)
        return wait

    async def audit_rate_limited(self, ip: str, limit: Limit | None, *, via: str,
                                 user_agent: str, info: ClassInfo | None = None) -> None:
        """One audit event per source, bucket and window for refusals by a rate limit.

        NOTE: a flood must not flood the log too, and must not vanish from it either:
        refusals are counted per (address, bucket) in a window that opens with the
        first; the first one is recorded, then the 10th, 100th, 1000th... each event
        carrying the count so far and when the window opened."""
        svc = self.svc
        bucket = limit.bucket if limit is not None else "unknown"
        n, first = await svc.store.count_refusals(
            f"{bucket}:{ip}", RATE_LIMIT_AUDIT_WINDOW_S,
            class_id=info.id if info is not None else None)
        if not milestone(n):
            return
        await svc.auditor.record(
            "join", actor="visitor", org=info.org if info else None,
            class_id=info.id if info else None, reason=Reason.RATE_LIMITED.value, ip=ip,
            user_agent=user_agent,
            facts={"action": "deny", "rule": "rate_limit", "via": via, "bucket": bucket,
                   "count": n, "window_s": RATE_LIMIT_AUDIT_WINDOW_S,
                   "first_at": int(first * 1000)},
        )

    async def with_token(
        self, token: str, *, ip: str, device_cookie: str | None, user_agent: str
    ) -> JoinOutcome:
        """A link opened. Round trip 1 (the link's own budget and the class snapshot,
        keyed by the token's claims read unverified) comes before any signature check.

        NOTE: what the attempt is charged depends on what it proves. A verified current
        link of a roster student of a class that has not ended is charged to its link
        (here) and its class (on entry), never to its address or network: thousands of
        students share one address behind a carrier's or a school's NAT. Everything
        that fails (not shaped like our tokens, a bad signature, an unknown or revoked
        link, a banned source) is charged to the source's failure budgets, and once
        those are drained it is refused as rate-limited, audited in aggregate. Claims
        that cannot name a live link are charged before any signature work (and refused
        without it when the source is drained); the decision is always taken on the
        verified claims only."""
        svc = self.svc
        store = svc.store
        if token.count(".") != 2:
            # NOTE: no device cookie is minted for noise: nothing here names a link.
            return await self._malformed(
                token, ip=ip, dev=device_hash(device_cookie) if device_cookie else None,
                user_agent=user_agent)
        fresh_cookie = None
        if device_cookie is None:
            fresh_cookie = device_cookie = new_device_cookie()
        dev = device_hash(device_cookie)
        peek = peek_claims(token)
        if peek is None:
            # Shaped like a token but not like ours (a forged header, say): a failure.
            wait = await self.charge_failure(ip, user_agent=user_agent)
            if wait > 0:
                return self._refused(Reason.RATE_LIMITED, wait, fresh_cookie)
            facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
            return await self._decide(facts, None, ip=ip, dev=dev, fresh_cookie=fresh_cookie,
                                      user_agent=user_agent, via="link")
        _kid, jti, sub, cls = peek
        claimed = TokenFacts(failure=None, student_id=StudentId(sub), class_id=ClassId(cls),
                             jti=Jti(jti))
        snap = await store.snapshot(cls, claimed, device=dev, ip=ip,
                                    limits=(link_limit(jti),))
        wait = float(snap.extra.get("wait", 0.0))
        if wait > 0:
            self.svc.metrics.rate_limited.labels("join").inc()
            # NOTE: the claims are unverified here, so the event names no class.
            await self.audit_rate_limited(ip, snap.extra.get("limited_by"), via="link",
                                          user_agent=user_agent)
            return self._refused(Reason.RATE_LIMITED, wait, fresh_cookie)
        if snap.state is not None and (snap.state.banned_device or snap.state.banned_ip):
            # NOTE: a banned source is refused before the signature is even checked.
            wait = await self.charge_failure(ip, user_agent=user_agent)
            if wait > 0:
                return self._refused(Reason.RATE_LIMITED, wait, fresh_cookie)
            reason = Reason.BANNED_DEVICE if snap.state.banned_device else Reason.BANNED_IP
            decision = Decision(Action.DENY, reason, "bans",
                                {"ban_reason": snap.state.ban_reason, "verified": False})
            return await self._finish_deny(decision, snap, claimed, ip=ip, dev=dev,
                                           fresh_cookie=fresh_cookie, user_agent=user_agent)
        live = _proves_a_live_link(snap)
        if not live:
            # Fails whatever the signature says: charged before any signature work.
            wait = await self.charge_failure(ip, user_agent=user_agent)
            if wait > 0:
                return self._refused(Reason.RATE_LIMITED, wait, fresh_cookie)
        facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
        if facts.failure == "unknown_kid" and svc.keyring.reload_if_changed():
            # Another process may just have rotated keys.
            facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
        if facts.failure is None and (facts.class_id, facts.student_id, facts.jti) != (
                cls, sub, jti):
            facts = TokenFacts(failure="bad_claims")  # cannot happen with a valid signature
        if live and facts.failure is not None:
            # A live link's claims under a signature that does not verify: a forgery.
            wait = await self.charge_failure(ip, user_agent=user_agent)
            if wait > 0:
                return self._refused(Reason.RATE_LIMITED, wait, fresh_cookie)
        return await self._decide(facts, snap if facts.failure is None else None, ip=ip,
                                  dev=dev, fresh_cookie=fresh_cookie, user_agent=user_agent,
                                  via="link")

    async def check_link(self, token: str, *, ip: str, device_cookie: str | None,
                         user_agent: str, via: str) -> LinkCheck:
        """Verify a link as ``with_token`` does, and stop there: for what a student does
        with their own link other than joining (``via`` names it in the records).

        The same checks (shape, signature, issuer, expiry, the current link of a roster
        student of an existing class, bans), the same charges to the source's failure
        budgets for whatever fails, the same refusals, recorded as a join's are (with
        ``via``). Nothing else happens: no device cookie is minted, nothing is bound,
        issued or consumed, and the link's own join budget is not charged. The rules
        after the credential's (``CREDENTIAL_RULES``) are not asked: a link bound to
        another device, or of a class that has ended, still proves whose it is."""
        svc = self.svc
        dev = device_hash(device_cookie) if device_cookie else None
        if token.count(".") != 2:
            return LinkCheck(refusal=await self._malformed(token, ip=ip, dev=dev,
                                                           user_agent=user_agent))
        peek = peek_claims(token)
        snap: Snapshot | None = None
        claimed: TokenFacts | None = None
        if peek is not None:
            _kid, jti, sub, cls = peek
            claimed = TokenFacts(failure=None, student_id=StudentId(sub),
                                 class_id=ClassId(cls), jti=Jti(jti))
            snap = await svc.store.snapshot(cls, claimed, device=dev, ip=ip)
        current = snap is not None and _names_a_current_link(snap)
        banned = bool(snap is not None and snap.state is not None
                      and (snap.state.banned_device or snap.state.banned_ip))
        charged = not current or banned
        if charged:
            # Fails whatever the signature says: charged before any signature work.
            wait = await self.charge_failure(ip, via=via, user_agent=user_agent)
            if wait > 0:
                return LinkCheck(refusal=self._refused(Reason.RATE_LIMITED, wait, None))
        facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
        if facts.failure == "unknown_kid" and svc.keyring.reload_if_changed():
            facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
        if facts.failure is None and (claimed is None or (
                facts.class_id, facts.student_id, facts.jti) != (
                claimed.class_id, claimed.student_id, claimed.jti)):
            facts = TokenFacts(failure="bad_claims")  # cannot happen with a valid signature

        async def refuse(decision: Decision, known: Snapshot | None) -> LinkCheck:
            # NOTE: unlike a join, which charges a refused current link to the link's
            # own budget, every refusal here is charged to its source (once).
            if not charged:
                wait = await self.charge_failure(ip, via=via, user_agent=user_agent)
                if wait > 0:
                    return LinkCheck(refusal=self._refused(Reason.RATE_LIMITED, wait, None))
            decision = Decision(decision.action, decision.reason, decision.rule,
                                {**decision.facts, "via": via})
            await self._record(decision, known, facts, ip, dev, user_agent, None)
            info = known.info if known is not None else None
            return LinkCheck(refusal=JoinOutcome(
                decision=decision, class_id=info.id if info else None,
                class_title=info.title if info else None))

        attempt = Attempt(class_id=ClassId(facts.class_id or "-"), token=facts, ip=ip,
                          device=dev)
        if facts.failure is not None or facts.class_id is None or snap is None:
            return await refuse(evaluate(attempt, _NO_CLASS_STATE, _STRICT, self._now), None)
        if snap.info is None or snap.state is None:
            return await refuse(Decision(Action.DENY, Reason.TOKEN_INVALID, "class_exists",
                                         {"class": "unknown"}), None)
        decision = evaluate(attempt, snap.state, policy_of(snap.info), self._now)
        if decision.action is Action.DENY and decision.rule in CREDENTIAL_RULES:
            return await refuse(decision, snap)
        if snap.student is None:
            return await refuse(Decision(Action.DENY, Reason.NOT_ON_ROSTER, "roster", {}), snap)
        return LinkCheck(facts=facts, info=snap.info, student_name=snap.student.name)

    async def _malformed(self, token: str, *, ip: str, dev: str | None,
                         user_agent: str) -> JoinOutcome:
        """A link not even shaped like a signed token (not three dot-separated parts: no
        class, no key id, no signature to check): the source is charged and the refusal
        counted in the same round trip.

        NOTE: such refusals are audited per source in aggregate, as rate-limited ones
        are: the first from an address in a window in full, then the 10th, 100th, ...
        each with the count so far. A flood of garbage from many addresses (a scanner,
        a botnet) must not flood the log; anything shaped like a token (a forgery naming
        a class, a wrong algorithm or key id) is still recorded one by one."""
        svc = self.svc
        wait, limit, n, first = await svc.store.charge_and_count(
            failure_limits(ip), f"malformed:{ip}", RATE_LIMIT_AUDIT_WINDOW_S)
        if wait > 0:
            svc.metrics.rate_limited.labels("join").inc()
            await self.audit_rate_limited(ip, limit, via="link", user_agent=user_agent)
            return self._refused(Reason.RATE_LIMITED, wait, None)
        facts = verify_join_token(svc.keyring, token, issuer=svc.settings.public_url)
        attempt = Attempt(class_id=ClassId("-"), token=facts, ip=ip, device=dev)
        decision = evaluate(attempt, _NO_CLASS_STATE, _STRICT, self._now)
        if milestone(n):
            await self._record(decision, None, facts, ip, dev, user_agent, None,
                               aggregate={"count": n, "window_s": RATE_LIMIT_AUDIT_WINDOW_S,
                                          "first_at": int(first * 1000)})
        else:
            svc.metrics.join_attempts.labels(decision.action.value,
                                             decision.reason.value).inc()
        return JoinOutcome(decision=decision)

    async def explain_attempt(self, facts: TokenFacts, *, ip: str,
                              device: str | None) -> dict[str, Any]:
        """The rule-by-rule explanation of an attempt, without acting on it."""
        store = self.svc.store
        now = self._now
        attempt = Attempt(class_id=ClassId(facts.class_id or "-"), token=facts, ip=ip,
                          device=device)
        if facts.failure is not None or facts.class_id is None:
            return explain(attempt, _NO_CLASS_STATE, _STRICT, now).to_dict()
        snap = await store.snapshot(facts.class_id, facts, device=device, ip=ip)
        if snap.info is None or snap.state is None:
            return {"decision": {"action": "deny", "reason": "token_invalid",
                                 "rule": "class_exists"}, "steps": []}
        policy = policy_of(snap.info)
        state, _ = await self._rules_fact(snap.info, snap.state, facts, policy)
        out = explain(attempt, state, policy, now).to_dict()
        out["class_id"] = facts.class_id
        return out

    async def explain_token(self, token: str, *, ip: str, device: str | None) -> dict[str, Any]:
        facts = verify_join_token(self.svc.keyring, token, issuer=self.svc.settings.public_url)
        return await self.explain_attempt(facts, ip=ip, device=device)

    async def explain_student(self, cid: str, sid: str) -> dict[str, Any]:
        """As if the student opened their current link again from their bound device."""
        store = self.svc.store
        links = await store.current_links(cid)
        rec = links.get(sid)
        if rec is None:
            facts = TokenFacts(failure=None, student_id=StudentId(sid), class_id=ClassId(cid),
                               jti=Jti("-"), exp=self.svc.clock() + 86400, nbf=0.0)
        else:
            facts = TokenFacts(failure=None, student_id=rec.student_id, class_id=rec.class_id,
                               jti=rec.jti, exp=float(rec.exp), nbf=float(rec.nbf))
        device = await store.bound_device(cid, sid)
        ip = await store.last_ip(cid, sid) or "0.0.0.0"  # noqa: S104
        return await self.explain_attempt(facts, ip=ip, device=device)

    async def admit_waiting_by_policy(self, cid: str) -> int:
        """When the host arrives, re-decide every student who was waiting only for the
        host; those the class policy now admits are let in (``standard``)."""
        svc = self.svc
        store = svc.store
        waiting = await store.waiting(cid)
        if not waiting:
            return 0
        links = await store.current_links(cid)
        admitted = 0
        for ticket_id, w in waiting.items():
            if w.get("reason") != Reason.AWAITING_HOST.value:
                continue
            t = await store.ticket(ticket_id)
            rec = links.get(str(w.get("student_id")))
            if t is None or rec is None:
                continue
            facts = TokenFacts(failure=None, student_id=rec.student_id, class_id=rec.class_id,
                               jti=rec.jti, exp=float(rec.exp), nbf=float(rec.nbf))
            snap = await store.snapshot(cid, facts, device=t.device, ip="0.0.0.0")  # noqa: S104
            if snap.info is None or snap.state is None:
                return admitted
            attempt = Attempt(class_id=ClassId(cid), token=facts, ip="-", device=t.device)
            decision = evaluate(attempt, snap.state, policy_of(snap.info), self._now)
            if decision.action is not Action.ADMIT:
                continue
            # the record is written by the same script as the admission (audit.outbox)
            record = svc.auditor.entry("join.admitted_on_host_arrival", actor="system",
                                       org=snap.info.org, class_id=cid,
                                       subject=t.student_id, reason=decision.reason.value,
                                       facts={"rule": decision.rule, "ticket": ticket_id})
            if await store.admit_ticket(ticket_id, by="policy", record=record) is None:
                continue
            admitted += 1
            await svc.bus.publish(cid, {"type": "admitted", "ticket": ticket_id,
                                        "student_id": t.student_id, "by": "policy",
                                        "name": snap.student.name if snap.student else None})
        return admitted

    async def with_code(
        self, code_hash: str | None, *, ip: str, device_cookie: str | None, user_agent: str
    ) -> JoinOutcome | None:
        """A short code typed (``code_hash`` None: not even well-formed). None when the
        code is unknown (the caller answers without revealing more); an outcome with
        ``retry_after`` when refused by a rate limit.

        NOTE: a correct code is a credential like a link: charged to its link, never to
        its address. A wrong one is charged to the address, its network and the whole
        code space, and while any of those is drained every code from there is refused
        before it is looked up, right or wrong (see ClassStore.code_attempt)."""
        svc = self.svc
        store = svc.store
        status, wait, limit, found = await store.code_attempt(
            code_hash, code_limits(ip), CODE_LINK_LIMIT)
        if status in ("limited", "link_limited"):
            svc.metrics.rate_limited.labels("code").inc()
            bucket = limit if limit is not None else CODE_LINK_LIMIT
            await self.audit_rate_limited(ip, bucket, via="code", user_agent=user_agent)
            return self._refused(Reason.RATE_LIMITED, wait, None)
        if found is None:
            return None
        cid, jti = found.split("|", 1)
        rec = await store.link_record(cid, jti)
        if rec is None:
            # A code left behind by a link that is gone: a failure like a wrong code.
            wait = await self.charge_failure(ip, via="code", user_agent=user_agent,
                                             metric="code")
            return self._refused(Reason.RATE_LIMITED, wait, None) if wait > 0 else None
        facts = TokenFacts(
            failure=None,
            student_id=rec.student_id,
            class_id=rec.class_id,
            jti=rec.jti,
            exp=float(rec.exp),
            nbf=float(rec.nbf),
        )
        fresh_cookie = None
        if device_cookie is None:
            fresh_cookie = device_cookie = new_device_cookie()
        return await self._decide(facts, None, ip=ip, dev=device_hash(device_cookie),
                                  fresh_cookie=fresh_cookie, user_agent=user_agent, via="code")

    def _refused(self, reason: Reason, wait: float, fresh_cookie: str | None) -> JoinOutcome:
        # NOTE: refusals by the rate limiter are counted in metrics and aggregated into
        # the audit log (audit_rate_limited), never written one by one.
        d = Decision(Action.DENY, reason, "rate_limit", {})
        self.svc.metrics.join_attempts.labels(d.action.value, d.reason.value).inc()
        return JoinOutcome(decision=d, retry_after=wait, new_device_cookie=fresh_cookie)

    async def _decide(
        self,
        facts: TokenFacts,
        snap: Snapshot | None,
        *,
        ip: str,
        dev: str,
        fresh_cookie: str | None,
        user_agent: str,
        via: str,
    ) -> JoinOutcome:
        svc = self.svc
        store = svc.store
        now = self._now
        attempt = Attempt(class_id=ClassId(facts.class_id or "-"), token=facts, ip=ip,
                          device=dev, via="code" if via == "code" else "link")
        if facts.failure is not None or facts.class_id is None:
            decision = evaluate(attempt, _NO_CLASS_STATE, _STRICT, now)
            await self._record(decision, None, facts, ip, dev, user_agent, None)
            return JoinOutcome(decision=decision, new_device_cookie=fresh_cookie)
        if snap is None:
            snap = await store.snapshot(facts.class_id, facts, device=dev, ip=ip)
        if snap.info is None or snap.state is None:
            decision = Decision(Action.DENY, Reason.TOKEN_INVALID, "class_exists",
                                {"class": "unknown"})
            await self._record(decision, None, facts, ip, dev, user_agent, None)
            return JoinOutcome(decision=decision, new_device_cookie=fresh_cookie)
        policy = policy_of(snap.info)
        state, rules = await self._rules_fact(snap.info, snap.state, facts, policy)
        decision = evaluate(attempt, state, policy, now)
        if decision.reason is Reason.RULES_NOT_ACKNOWLEDGED and rules is not None:
            return await self._offer_rules(decision, snap, facts, rules, ip=ip, dev=dev,
                                           fresh_cookie=fresh_cookie, user_agent=user_agent,
                                           via=via)
        # (the snapshot read the reset marker in its round trip: only a student whose
        # device was reset pays the extra call that takes it)
        if policy.device_binding and snap.state.bound_device is None and \
                snap.student is not None and facts.student_id and \
                snap.extra.get("device_reset") and \
                await store.take_device_reset(snap.info.id, facts.student_id):
            # The teacher reset this student's device: say which device came back,
            # whatever the policy decides for it.
            await self.alert(snap.info.id, "device_reset_returned",
                             dedup=f"{facts.student_id}|{dev}", student_id=facts.student_id,
                             name=snap.student.name, device_hint=device_hint(user_agent))
        if decision.action is Action.DENY:
            return await self._finish_deny(decision, snap, facts, ip=ip, dev=dev,
                                           fresh_cookie=fresh_cookie, user_agent=user_agent)
        outcome = JoinOutcome(
            decision=decision,
            class_id=facts.class_id,
            class_title=snap.info.title,
            student_name=snap.student.name if snap.student else None,
            new_device_cookie=fresh_cookie,
        )
        status = await self._enter(outcome, snap, facts, policy, dev, ip, user_agent, via)
        if status == "conflict":
            # Another device won the race to bind this link: decide again on fresh state.
            snap = await store.snapshot(facts.class_id, facts, device=dev, ip=ip)
            assert snap.info is not None and snap.state is not None
            state, _ = await self._rules_fact(snap.info, snap.state, facts, policy)
            decision = evaluate(attempt, state, policy, now)
            if decision.action is Action.DENY:
                return await self._finish_deny(decision, snap, facts, ip=ip, dev=dev,
                                               fresh_cookie=fresh_cookie,
                                               user_agent=user_agent)
            outcome.decision = decision
            status = await self._enter(outcome, snap, facts, policy, dev, ip, user_agent, via)
        if status == "ok":
            # recorded by the script that admitted or seated the student (_enter)
            svc.metrics.join_attempts.labels(outcome.decision.action.value,
                                             outcome.decision.reason.value).inc()
        return outcome

    def rules_store(self) -> RulesStore:
        return RulesStore(self.svc.redis, self.svc.settings.redis_prefix)

    async def class_rules(self, info: ClassInfo) -> ClassRules:
        """The rules that apply to the class (its own, its orgs', or the default)."""
        chain = await self.svc.staff.org_ancestors(info.org)
        return await self.rules_store().effective(info.id, chain or [info.org])

    async def _rules_fact(self, info: ClassInfo, state: ClassState, facts: TokenFacts,
                          policy: Policy) -> tuple[ClassState, ClassRules | None]:
        """The state with ``rules_acknowledged`` read from the store, when the policy
        requires the acknowledgment (one more round trip for those classes only)."""
        if not policy.require_rules_ack or not facts.student_id:
            return state, None
        rules = await self.class_rules(info)
        acked = await self.rules_store().acknowledged(info.id, facts.student_id, rules.version)
        return replace(state, rules_acknowledged=acked), rules

    async def _offer_rules(self, decision: Decision, snap: Snapshot, facts: TokenFacts,
                           rules: ClassRules, *, ip: str, dev: str, fresh_cookie: str | None,
                           user_agent: str, via: str) -> JoinOutcome:
        """Refused until the rules are acknowledged: the refusal is recorded like any
        other, but is not a failure (a whole class behind one school address meets it at
        the start of a term), and it carries the rules and a one-use form reference bound
        to this link and device."""
        assert snap.info is not None and facts.student_id is not None
        await self._record(decision, snap, facts, ip, dev, user_agent, None)
        ref = await self.rules_store().new_ack_ref(
            snap.info.id, sid=facts.student_id, jti=facts.jti or "", version=rules.version,
            device=dev, via=via)
        return JoinOutcome(decision=decision, class_id=snap.info.id,
                           class_title=snap.info.title,
                           student_name=snap.student.name if snap.student else None,
                           new_device_cookie=fresh_cookie, rules=rules, rules_ack=ref)

    async def acknowledge_rules(self, ref: str, *, ip: str, device_cookie: str | None,
                                user_agent: str) -> JoinOutcome | None:
        """The student pressed "I have read and agree": record the acknowledgment of the
        version they were shown, then decide their entry again. None when the reference
        is unknown, used, expired or not this device's."""
        svc = self.svc
        dev = device_hash(device_cookie) if device_cookie else None
        taken = await self.rules_store().take_ack_ref(ref, dev)
        if taken is None or dev is None:
            return None
        cid, data = taken
        sid, jti, version = str(data["sid"]), str(data["jti"]), str(data["version"])
        rec = await svc.store.link_record(cid, jti)
        info = await svc.store.get_class(cid)
        if rec is None or info is None or rec.student_id != sid:
            return None
        rules = await self.class_rules(info)
        await self.rules_store().acknowledge(cid, sid, version)
        await svc.auditor.record(
            "rules.acknowledged", actor=f"student:{sid}", org=info.org, class_id=cid,
            subject=sid, reason="acknowledged", ip=ip, device=dev, user_agent=user_agent,
            facts={"version": version, "term": rules.term or None, "source": rules.source,
                   "current": version == rules.version})
        facts = TokenFacts(failure=None, student_id=rec.student_id, class_id=rec.class_id,
                           jti=rec.jti, exp=float(rec.exp), nbf=float(rec.nbf))
        return await self._decide(facts, None, ip=ip, dev=dev, fresh_cookie=None,
                                  user_agent=user_agent, via=str(data.get("via") or "link"))

    async def _enter(self, out: JoinOutcome, snap: Snapshot, facts: TokenFacts, policy: Policy,
                     dev: str, ip: str, user_agent: str, via: str) -> str:
        """Admit or knock in one atomic step (see ClassStore.apply_entry)."""
        svc = self.svc
        store = svc.store
        assert snap.info is not None and facts.student_id is not None
        d = out.decision
        cid, sid = snap.info.id, facts.student_id
        hint = device_hint(user_agent)
        name = snap.student.name if snap.student else None
        bind = "none"
        if policy.device_binding and not d.facts.get("released_device"):
            # (a device released from a reissued link's binding waits without binding)
            bind = "rebind" if d.facts.get("rebind") else "bind"
        now = svc.clock()
        if d.action is Action.ADMIT:
            mode = "readmit" if d.facts.get("readmit") else "admit"
            entry: dict[str, Any] = {"device": dev, "at": now, "by": "policy"}
            event: dict[str, Any] = {"type": "admitted", "student_id": sid, "name": name,
                                     "by": "policy", "device_hint": hint, "class_id": cid}
            status = "admitted"
        else:
            mode = "wait"
            entry = {"student_id": sid, "since": now, "device_hint": hint,
                     "reason": d.reason.value}
            event = {"type": "knock", "student_id": sid, "name": name, "reason": d.reason.value,
                     "device_hint": hint, "since": now, "class_id": cid}
            status = "waiting"
        ticket_fields = {"student_id": sid, "device": dev, "status": status,
                         "reason": d.reason.value, "created": repr(now), "device_hint": hint,
                         "jti": facts.jti or "", "ip": ip}
        budget = Limit(f"class:{cid}", per_second=100, burst=500)
        # NOTE: the record is written by the script that makes the change (audit.outbox):
        # an admission the teacher is shown always has its record, whatever dies when.
        record = svc.auditor.entry("join", **self._record_fields(d, snap, facts, ip, dev,
                                                                   user_agent, None))
        result, ticket, nonce, _new, attempts = await store.apply_entry(
            cid, sid, dev, mode=mode, bind=bind, ip=ip, ticket_fields=ticket_fields,
            entry=entry, event=event, budget=budget,
            nonce_ttl_s=svc.settings.go_nonce_ttl_s, jti=facts.jti or "",
            attempts=("attempts", FLOOD_WINDOW_S), record=record,
        )
        await self._flood_check(cid, attempts)
        if result == "limited":
            svc.metrics.rate_limited.labels("class").inc()
            await self.audit_rate_limited(ip, budget, via=via, user_agent=user_agent,
                                          info=snap.info)
            if await store.once(cid, "flood", 60):
                await self.alert(cid, "flood")
            refused = self._refused(Reason.RATE_LIMITED, float(ticket or 1), out.new_device_cookie)
            out.decision, out.retry_after = refused.decision, refused.retry_after
            return result
        if result != "ok":
            return result
        if mode != "wait" and ticket is not None:
            # the admission entry names its ticket (used when the host removes the student)
            out.ticket = ticket
            out.redirect = f"/go/{nonce}"
        else:
            out.ticket = ticket
        opens = d.facts.get("opens_at")
        out.opens_at = str(opens) if opens else None
        return result

    async def _finish_deny(self, decision: Decision, snap: Snapshot, facts: TokenFacts, *,
                           ip: str, dev: str, fresh_cookie: str | None,
                           user_agent: str) -> JoinOutcome:
        assert snap.info is not None
        cid = snap.info.id
        hint = device_hint(user_agent)
        name = snap.student.name if snap.student else None
        sid = facts.student_id
        alert = None
        if decision.reason is Reason.DEVICE_MISMATCH:
            # The alert carries ban handles for the second device and its address, so
            # the host can block exactly that visitor in one click.
            alert = self._alert_body("link_shared", f"{sid}|{dev}", student_id=sid,
                                     name=name, device_hint=hint, ban_device=f"d:{dev}",
                                     ban_ip=f"i:{ip}")
        elif decision.reason in (Reason.BANNED_DEVICE, Reason.BANNED_IP):
            # One alert per ban that matched and link used (counted on repeats), not per
            # device: an address or network ban meets a fresh device at every cleared
            # cookie, and that must not flood the feed.
            alert = self._alert_body("banned_returning",
                                     f"{snap.extra.get('ban_key') or dev}|{sid}",
                                     student_id=sid, name=name, device_hint=hint,
                                     reason=decision.reason.value)
        await self._record(decision, snap, facts, ip, dev, user_agent, None)
        await self._count_failure(cid, ip, hint, alert=alert,
                                  verified=decision.facts.get("verified") is not False)
        out = JoinOutcome(decision=decision, class_id=cid, class_title=snap.info.title,
                          new_device_cookie=fresh_cookie)
        opens = decision.facts.get("opens_at")
        out.opens_at = str(opens) if opens else None
        return out

    async def _count_failure(self, cid: str, ip: str, hint: str, *, verified: bool,
                             alert: dict[str, Any] | None = None) -> None:
        """Five refusals from one address within a minute raise one alert (per 5 min);
        a verified refusal also counts towards the class's flood detector. ``alert``, the
        refusal's own alert, is raised in the same round trip as the counters."""
        store = self.svc.store
        counters = [(f"fail:{ip}", 60)]
        if verified:
            counters.append(("attempts", FLOOD_WINDOW_S))
        publish = None
        if alert is not None:
            publish = self.svc.bus.message(cid, {"type": "alert", **alert, "count": 1})
        new, counts = await store.note_refusal(cid, alert, counters, publish=publish)
        if new and alert is not None:
            self.svc.metrics.alerts.labels(str(alert["kind"])).inc()
        if counts[0] == REPEATED_FAILURES and \
                await store.once(cid, f"failalert:{ip}", 300):
            await self.alert(cid, "repeated_failures", dedup=ip, device_hint=hint)
        if verified:
            await self._flood_check(cid, counts[1])

    async def _flood_check(self, cid: str, attempts: int) -> None:
        """One ``flood`` alert when the class's verified attempts (admitted, waiting and
        refused alike) cross FLOOD_ATTEMPTS within FLOOD_WINDOW_S.

        NOTE: a detector, never a limit: the class budget and the per-link budgets do
        the refusing. It exists because a flood of refusals (a leaked sheet opened on
        other devices) never charges the class budget, which counts entries only."""
        store = self.svc.store
        # INCR is atomic: exactly one attempt per window sees the threshold itself.
        if attempts == FLOOD_ATTEMPTS and await store.once(cid, "flood", 60):
            await self.alert(cid, "flood", attempts=attempts, window_s=FLOOD_WINDOW_S)

    async def alert(self, cid: str, kind: str, *, dedup: str | None = None,
                    **data: Any) -> None:
        """Raise an alert for the class's host.

        NOTE: the same alert (same kind and ``dedup`` key, by default the same data)
        within ALERT_WINDOW_S is counted on the one already shown, not raised again, and
        the host is shown the newest ALERTS_PER_KIND of each kind: a flood of refused
        attempts cannot flush the feed (a ``banned_returning`` stays in view)."""
        alert = self._alert_body(kind, dedup, **data)
        new, _count = await self.svc.store.add_alert(cid, alert)
        if new:
            await self._publish_alert(cid, alert)

    def _alert_body(self, kind: str, dedup: str | None, **data: Any) -> dict[str, Any]:
        """The alert with its id: the same kind and ``dedup`` key (by default the same
        data) in the same ALERT_WINDOW_S window share an id."""
        now = self.svc.clock()
        if dedup is None:
            dedup = json.dumps(data, sort_keys=True, default=str)
        window = int(now // ALERT_WINDOW_S)
        aid = hashlib.sha256(f"{kind}\0{dedup}\0{window}".encode()).hexdigest()[:16]
        return {"id": aid, "kind": kind, "at": now, **data}

    async def _publish_alert(self, cid: str, alert: dict[str, Any]) -> None:
        await self.svc.bus.publish(cid, {"type": "alert", **alert, "count": 1})
        self.svc.metrics.alerts.labels(str(alert["kind"])).inc()

    async def _record(
        self,
        decision: Decision,
        snap: Snapshot | None,
        facts: TokenFacts,
        ip: str,
        dev: str | None,
        ua: str,
        ticket: str | None,
        aggregate: dict[str, int] | None = None,
    ) -> None:
        svc = self.svc
        svc.metrics.join_attempts.labels(decision.action.value, decision.reason.value).inc()
        await svc.auditor.record("join", **self._record_fields(
            decision, snap, facts, ip, dev, ua, ticket, aggregate))

    @staticmethod
    def _record_fields(
        decision: Decision,
        snap: Snapshot | None,
        facts: TokenFacts,
        ip: str,
        dev: str | None,
        ua: str,
        ticket: str | None,
        aggregate: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        info = snap.info if snap else None
        return dict(
            actor=f"student:{facts.student_id}" if info and facts.student_id else "visitor",
            org=info.org if info else None,
            class_id=info.id if info else None,
            subject=facts.student_id if info else None,
            reason=decision.reason.value,
            ip=ip,
            device=dev,
            user_agent=ua,
            name=snap.student.name if snap and snap.student else None,
            facts={
                "action": decision.action.value,
                "rule": decision.rule,
                "jti": facts.jti if info else None,
                "ticket": ticket,
                "token_failure": facts.failure,
                **{k: v for k, v in decision.facts.items() if isinstance(v, (str, int, bool))},
                **(aggregate or {}),
            },
        )
