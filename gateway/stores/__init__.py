"""The gateway's state in Redis, one module per concern.

- classes.py: classes and their rosters
- links.py: each student's current link, revoked links, short codes
- join.py: what one join attempt reads (the snapshot) and the step that acts on it
- room.py: the waiting room (tickets, admissions, sockets, ``/go`` nonces) and hosts
- alerts.py: alerts shown to the host and class counters
- bans.py: device and address bans
- limits.py: rate limits and refusal counters
- keys.py: every Redis key name; lua/: the scripts, run by audit/scripts.py

All keys of one class share the hash tag ``{c:<class_id>}`` so the multi-key scripts also
run on Redis Cluster. Every step that must be atomic (bind a device, admit, consume a
``/go`` nonce, rate-limit) is one script; nothing here reads a value in Python and writes
a decision back. Nothing is authoritative in process memory: any number of gateway
processes can share one Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from audit.scripts import CommandPipeline, ScriptRunner

from .alerts import ALERT_TTL_S, ALERTS_PER_KIND, Alerts
from .bans import Bans
from .classes import Classes, ClassInfo, Student, schedule_from_json, schedule_to_json
from .ids import device_hash, new_id, new_secret, split_ticket, valid_class_id, valid_student_id
from .join import Join, Snapshot
from .keys import AuditKeys, Keys
from .limits import Limit, Limits
from .links import RELEASED_TTL_S, LinkRecord, Links, Retired
from .outbox import RecordedWrites
from .room import HOST_TTL_S, WAIT_SOCKET_REFRESH_S, WAIT_SOCKET_STALE_S, Room, Ticket

Clock = Callable[[], float]


class ClassStore:
    """Every class's state for every gateway process: one part per concern
    (``classes``, ``links``, ``join``, ``room``, ``alert_board``, ``ban_list``,
    ``limits``), and
    their methods under one name each, so callers need not know which part holds what.

    ``fast`` (gateway/redis_mux.py), when given, carries every script call and the join
    path's reads; everything else uses ``redis``."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, clock: Clock = time.time,
                 fast: CommandPipeline | None = None, audit_replicas: int = 0,
                 audit_wait_ms: int = 1000) -> None:
        self.keys = k = Keys(prefix)
        self.scripts = scripts = ScriptRunner(redis, fast)
        # Audit records written by the scripts themselves go to the class's outbox; the
        # same round trip marks it for the sequencer and, with replicas, WAITs for them.
        recorded = RecordedWrites(redis, k, scripts, audit_keys=AuditKeys(prefix),
                                  replicas=audit_replicas, wait_ms=audit_wait_ms)
        self.links = Links(redis, k, scripts)
        self.classes = Classes(redis, k, self.links, clock=clock)
        self.limits = Limits(k, scripts, clock=clock)
        self.room = Room(redis, k, scripts, recorded, clock=clock)
        self.join = Join(k, scripts, self.limits, recorded, clock=clock)
        self.alert_board = Alerts(redis, k, scripts, clock=clock)
        self.ban_list = Bans(redis, k, clock=clock)

        # classes and rosters
        self.create_class = self.classes.create_class
        self.update_policy = self.classes.update_policy
        self.get_class = self.classes.get_class
        self.classes_of_owner = self.classes.classes_of_owner
        self.classes_of_orgs = self.classes.classes_of_orgs
        self.set_flag = self.classes.set_flag
        self.roster = self.classes.roster
        self.student = self.classes.student
        self.replace_roster = self.classes.replace_roster
        # links
        self.store_link = self.links.store_link
        self.revoke_student_links = self.links.revoke_student_links
        self.link_record = self.links.link_record
        self.current_links = self.links.current_links
        self.resolve_code = self.links.resolve_code
        # the join
        self.snapshot = self.join.snapshot
        self.apply_entry = self.join.apply_entry
        # the waiting room and hosts
        self.ticket = self.room.ticket
        self.current_ticket_of = self.room.current_ticket_of
        self.admit_ticket = self.room.admit_ticket
        self.deny_ticket = self.room.deny_ticket
        self.admit_student = self.room.admit_student
        self.remove_student = self.room.remove_student
        self.waiting = self.room.waiting
        self.admitted = self.room.admitted
        self.clear_room = self.room.clear_room
        self.bound_device = self.room.bound_device
        self.reset_device = self.room.reset_device
        self.take_device_reset = self.room.take_device_reset
        self.note_ip = self.room.note_ip
        self.last_ip = self.room.last_ip
        self.socket_opened = self.room.socket_opened
        self.socket_closed = self.room.socket_closed
        self.socket_seen = self.room.socket_seen
        self.gone_tickets = self.room.gone_tickets
        self.mint_nonce = self.room.mint_nonce
        self.consume_nonce = self.room.consume_nonce
        self.note_entered = self.room.note_entered
        self.entered_ticket = self.room.entered_ticket
        self.host_heartbeat = self.room.host_heartbeat
        self.host_gone = self.room.host_gone
        self.host_present = self.room.host_present
        self.once = self.room.once
        # alerts
        self.add_alert = self.alert_board.add_alert
        self.note_refusal = self.alert_board.note_refusal
        self.alerts = self.alert_board.alerts
        # bans
        self.add_ban = self.ban_list.add_ban
        self.bans = self.ban_list.bans
        self.lift_ban = self.ban_list.lift_ban
        # rate limits
        self.rate_limit = self.limits.rate_limit
        self.rate_limit_check = self.limits.rate_limit_check
        self.count_refusals = self.limits.count_refusals
        self.charge_and_count = self.limits.charge_and_count
        self.code_attempt = self.limits.code_attempt

    def outbox_key(self, cid: str) -> str:
        """The class's audit outbox (audit/outbox.py): records written with a change."""
        return self.keys.outbox(cid)


__all__ = [
    "ALERTS_PER_KIND",
    "ALERT_TTL_S",
    "WAIT_SOCKET_REFRESH_S",
    "WAIT_SOCKET_STALE_S",
    "HOST_TTL_S",
    "RELEASED_TTL_S",
    "Alerts",
    "Bans",
    "ClassInfo",
    "ClassStore",
    "Classes",
    "Join",
    "Keys",
    "Limit",
    "Limits",
    "LinkRecord",
    "Links",
    "Retired",
    "Room",
    "Snapshot",
    "Student",
    "Ticket",
    "device_hash",
    "new_id",
    "new_secret",
    "schedule_from_json",
    "schedule_to_json",
    "split_ticket",
    "valid_class_id",
    "valid_student_id",
]
