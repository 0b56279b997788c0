import asyncio, faulthandler, sys
from .helpers import running_gateway
async def test_startstop(tmp_path, redis_url, redis_prefix, redis):
    for i in range(15):
        async with running_gateway(tmp_path / str(i), redis_url, redis_prefix) as gw:
            pass
