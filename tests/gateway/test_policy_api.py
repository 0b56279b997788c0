"""Class policies, org defaults, org-wide bans and ``policy explain`` through the API
and the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from .helpers import make_class, open_link, running_gateway, token_of


async def test_policy_update_org_defaults_and_explain(tmp_path: Path, redis_url: str,
                                                      redis_prefix: str, redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        admin = gw.api(await gw.staff_user("admin.so", role="admin", org="so-gd"))
        api = gw.api(await gw.staff_user("co.lan", org="school-a", parent="so-gd"))
        r = await admin.put("/api/v1/orgs/so-gd/policy", json={"capacity": 2})
        assert r.status == 200
        r = await admin.put("/api/v1/orgs/so-gd/policy", json={"capacity": "many"})
        assert r.status == 400 and (await r.json())["error"]["field"] == "capacity"
        r = await api.put("/api/v1/orgs/so-gd/policy", json={"capacity": 3})
        assert r.status == 403
        cid, links = await make_class(gw, api, preset="standard")
        info = await (await api.get(f"/api/v1/classes/{cid}")).json()
        assert info["policy"]["capacity"] == 2  # inherited from the province department
        r = await api.put(f"/api/v1/classes/{cid}/policy",
                          json={"preset": "standard", "late_join_cutoff_minutes": -5})
        body = await r.json()
        assert r.status == 400 and body["error"]["field"] == "policy.late_join_cutoff_minutes"
        info = await (await api.get(f"/api/v1/classes/{cid}")).json()
        assert info["policy"]["preset"] == "standard"  # the old policy is still in force
        r = await api.put(f"/api/v1/classes/{cid}/policy", json={"preset": "strict"})
        assert r.status == 200 and (await r.json())["policy"]["admission"] == "host"
        # explain uses the enforcing code: this student would wait for the host
        r = await api.get(f"/api/v1/classes/{cid}/explain",
                          params={"student_id": links[0]["student_id"]})
        ex = await r.json()
        assert ex["decision"]["reason"] == "awaiting_host"
        assert [s["rule"] for s in ex["steps"]][0] == "token_signature"
        status, body = await open_link(gw.client(), links[0])
        assert body["reason"] == "awaiting_host"


async def test_org_wide_cidr_ban(tmp_path: Path, redis_url: str, redis_prefix: str,
                                 redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        it = gw.api(await gw.staff_user("it.hung", role="it", org="phong-gd"))
        api = gw.api(await gw.staff_user("co.lan", org="school-b", parent="phong-gd"))
        cid, links = await make_class(gw, api)
        r = await it.post("/api/v1/orgs/phong-gd/bans",
                          json={"cidr": "127.0.0.0/16", "reason": "attack from this network",
                                "expires_in_s": 600})
        assert r.status == 201
        key = (await r.json())["key"]
        status, body = await open_link(gw.client(), links[0])
        assert status == 403 and body["reason"] == "banned_ip"
        r = await it.get("/api/v1/orgs/phong-gd/bans")
        assert (await r.json())["bans"][0]["value"] == "127.0.0.0/16"
        r = await api.post("/api/v1/orgs/phong-gd/bans", json={"ip": "1.2.3.4", "reason": "x"})
        assert r.status == 403  # teachers do not manage org bans
        r = await it.delete(f"/api/v1/orgs/phong-gd/bans/{key}")
        assert r.status == 204
        status, body = await open_link(gw.client(), links[0])
        assert body["status"] == "waiting"


async def test_cli_policy_explain(tmp_path: Path, redis_url: str, redis_prefix: str,
                                  redis) -> None:
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, links = await make_class(gw, api)
        env = dict(os.environ, CLASSGUARD_REDIS_PREFIX=redis_prefix,
                   CLASSGUARD_PUBLIC_URL="http://classguard.test")
        res = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "policy", "explain", "--class", cid,
             "--token", links[0]["url"], "--data-dir", str(tmp_path / "data"),
             "--redis-url", redis_url],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert "decision: wait (awaiting_host) by rule admission" in res.stdout
        assert "token_signature" in res.stdout
        res = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway.cli", "policy", "explain", "--class", cid,
             "--token", token_of(links[0])[:-4] + "AAAA", "--data-dir", str(tmp_path / "data"),
             "--redis-url", redis_url],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert "decision: deny (token_invalid)" in res.stdout, res.stdout + res.stderr
