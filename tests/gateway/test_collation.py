"""Class lists in Vietnamese order: by given name, then the whole name; Đ after D,
ă and â after a, tones after the plain letter."""

from __future__ import annotations

from pathlib import Path

from gateway.collation import name_key, sort_by_name

from .helpers import make_class, running_gateway


def test_given_name_first_in_the_vietnamese_alphabet() -> None:
    names = ["Phạm Đức", "Võ Minh Duy", "Trần Thị Ân", "Lê Anh", "Nguyễn Văn An",
             "Đỗ Văn Dũng", "Hồ Thị Bình", "Ngô Ánh", "Lý Văn Anh", "Mai Ăn"]
    assert sort_by_name(names, str) == [
        "Nguyễn Văn An", "Lê Anh", "Lý Văn Anh", "Ngô Ánh", "Mai Ăn", "Trần Thị Ân",
        "Hồ Thị Bình", "Đỗ Văn Dũng", "Võ Minh Duy", "Phạm Đức"]
    # the same given name: the rest of the name decides (Đ after D there too)
    assert sorted(["Đinh An", "Dương An", "Bùi An"], key=name_key) == [
        "Bùi An", "Dương An", "Đinh An"]


async def test_links_and_control_room_lists_are_in_class_order(
        tmp_path: Path, redis_url: str, redis_prefix: str, redis: object) -> None:
    roster = [{"name": n, "external_id": f"HS{i}"} for i, n in enumerate(
        ["Đỗ Văn Đức", "Nguyễn Thị Dung", "Trần Ân", "Lê Văn An"])]
    async with running_gateway(tmp_path, redis_url, redis_prefix) as gw:
        api = gw.api(await gw.staff_user("co.lan"))
        cid, _ = await make_class(gw, api, roster=roster)
        r = await api.get(f"/api/v1/classes/{cid}/links")
        names = [x["name"] for x in (await r.json())["links"]]
        assert names == ["Lê Văn An", "Trần Ân", "Nguyễn Thị Dung", "Đỗ Văn Đức"]
