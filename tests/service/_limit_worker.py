"""One worker of the shared-limit tests: ``python -m tests.service._limit_worker``.

``burst URL PREFIX CALLS``: admits CALLS calls at once against
``requests_per_minute = 100`` and prints one JSON line: how many were
admitted and the Retry-After of each refusal.
``hold URL PREFIX SLOTS``: takes SLOTS concurrency slots (leases of 1 s,
renewed), prints ``held``, and runs until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from meshbridge import CallIdentity, Limit, Limiter, Refusal, Ticket
from meshbridge.service import RedisStore

CALLER = CallIdentity(source="agents", api_key_id="k1")
RPM = Limit("agents", {"source": "agents"}, requests_per_minute=100)
SLOTS = Limit("slots", {"source": "agents"}, concurrent=2)


async def burst(url: str, prefix: str, calls: int) -> None:
    limiter = Limiter([RPM], store=RedisStore(url, prefix=prefix))
    results = await asyncio.gather(*(limiter.admit(CALLER) for _ in range(calls)))
    waits = [r.retry_after for r in results if isinstance(r, Refusal)]
    admitted = sum(isinstance(r, Ticket) for r in results)
    print(json.dumps({"admitted": admitted, "retry_after": waits}), flush=True)
    await limiter.aclose()


async def hold(url: str, prefix: str, slots: int) -> None:
    limiter = Limiter([SLOTS], store=RedisStore(url, prefix=prefix), lease_seconds=1.0)
    tickets = [await limiter.admit(CALLER) for _ in range(slots)]
    assert all(isinstance(t, Ticket) for t in tickets), tickets
    print("held", flush=True)
    await asyncio.Event().wait()  # killed here; its leases are renewed until then


def main(argv: list[str]) -> None:
    command, url, prefix, count = argv
    asyncio.run((burst if command == "burst" else hold)(url, prefix, int(count)))


if __name__ == "__main__":
    main(sys.argv[1:])
