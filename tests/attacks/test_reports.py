"""Reports from students and parents: a device reports only through its own ticket, for
its own class. A ticket seen over a shoulder, a ticket of one class grafted onto another
class's id, or a form token of another ticket reports nothing anywhere."""

from __future__ import annotations

import re

import pytest

from .kit import Deployment, Device, Klass, Scene, scene

pytestmark = pytest.mark.slow

REPORT = {"category": "stranger", "role": "student"}


async def _waiting(s: Scene, k: Klass, i: int) -> tuple[Device, str]:
    kid = s.device()
    r = await kid.open(k.token(i))
    assert r.body["status"] == "waiting", r
    return kid, str(r.body["ticket"])


async def _form_token(kid: Device, ticket: str) -> str:
    r = await kid.get(f"/report/{ticket}")
    assert r.status == 200, r
    found = re.search(r'name="token" value="([0-9a-f]{64})"', str(r.body))
    assert found
    return found.group(1)


async def _reports(s: Scene, cid: str) -> list[dict[str, object]]:
    r = await s.admin.call("GET", "/api/v1/reports", params={"class_id": cid})
    assert r.status == 200, r
    return list(r.body["reports"])


async def test_a_ticket_reports_only_for_its_own_class(deployment: Deployment) -> None:
    async with scene(deployment) as s:
        a = await s.new_class("strict", title="Toán 10A1")
        b = await s.new_class("strict", title="Văn 10A2", owner=s.other_teacher)
        kid_a, ticket_a = await _waiting(s, a, 0)
        kid_b, ticket_b = await _waiting(s, b, 0)
        token_b = await _form_token(kid_b, ticket_b)
        token_a = await _form_token(kid_a, ticket_a)
        # class B's ticket grafted onto class A's id: no such ticket in class A
        grafted = f"{a.id}.{ticket_b.split('.', 1)[1]}"
        r = await kid_b.post(f"/report/{grafted}", json={**REPORT, "token": token_b})
        assert r.status == 404, r
        # class A's real ticket, seen over a shoulder, from B's device: not this device's
        r = await kid_b.post(f"/report/{ticket_a}", json={**REPORT, "token": token_b})
        assert r.status == 404, r
        r = await kid_b.post(f"/report/{ticket_a}", json={**REPORT, "token": token_a})
        assert r.status == 404, r
        r = await kid_b.get(f"/report/{ticket_a}")
        assert r.status == 404, r
        # A's device with B's form token on its own ticket: the token is not this ticket's
        r = await kid_a.post(f"/report/{ticket_a}", json={**REPORT, "token": token_b})
        assert r.status == 403, r
        assert await _reports(s, a.id) == []
        # each device reports for its own class only
        r = await kid_b.post(f"/report/{ticket_b}", json={**REPORT, "token": token_b})
        assert r.status == 201, r
        assert await _reports(s, a.id) == []
        (rep,) = await _reports(s, b.id)
        assert rep["class_id"] == b.id and rep["student_id"] == b.sid(0)
        # class A's teacher cannot act on class B's report
        r = await s.teacher.call("POST", f"/api/v1/reports/{rep['id']}/incident")
        assert r.status == 404, r
