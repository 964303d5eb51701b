"""The shared limit store: counters in Redis, changed only by server-side scripts.

Every worker of ``serve --workers N`` and every replica that points at the
same Redis (``[store] url``) shares each counter. Each operation of
:class:`meshbridge.LimitStore` is one Lua script, run by Redis as one
atomic step over all the keys it is given: no read-modify-write from Python,
so two workers can never both take the last slot.

Rules of the Redis store (those of ``LimitStore``, and):

1. A WINDOW is a sorted set of call ids scored by admission time (an exact
   sliding window); a BUCKET a hash (level, time of the level); a LEASE a
   sorted set of call ids scored by expiry, so a killed worker's slots come
   back when its leases run out; a TOTAL a number (``INCRBYFLOAT``).
2. Every key expires (``PEXPIRE``) once it can no longer matter: a window
   after its period, a bucket when it would be full again, a lease set
   after its last lease, a total ``period`` seconds after its last change.
3. Keys are ``PREFIX:COUNTER-KEY``; nothing outside ``PREFIX:`` is touched.
4. Redis errors are raised as they are: the limiter turns them into
   ``on_store_failure`` and decides when to try again. The client tries a
   command once more, at once, on a new connection when its connection
   failed (a Redis that restarted closed every pooled connection); a
   command that timed out after Redis ran it may so count a call twice,
   which errs on the side of the limit, never past it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from meshbridge import LimitCounter

__all__ = ["RedisStore"]

DEFAULT_PREFIX: Final = "meshbridge"
_GLOB: Final = re.compile(r"([*?\[\]\\])")

# Helpers every script starts with. The arguments after ARGV[1] (now) and
# ARGV[2] (the call id) come four per key: kind, limit, amount, period.
_COMMON: Final = """
local now = tonumber(ARGV[1])
local call = ARGV[2]
local function level(key, limit, period)
  local state = redis.call('HMGET', key, 'level', 'at')
  if not state[1] then return limit end
  return math.min(limit, tonumber(state[1]) + (now - tonumber(state[2])) * limit / period)
end
local function set_level(key, limit, period, value)
  redis.call('HSET', key, 'level', tostring(value), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((limit - value) * period / limit * 1000) + 1000)
  return limit - value
end
local function live(key, kind, period)
  if kind == 'window' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  end
  return redis.call('ZCARD', key)
end
local function outlive(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function add_total(key, amount, period)
  if period <= 0 then return tonumber(redis.call('GET', key) or '0') end
  local value = tonumber(redis.call('INCRBYFLOAT', key, amount))
  if value < 0 then
    value = 0
    redis.call('SET', key, '0')
  end
  redis.call('PEXPIRE', key, math.ceil(period * 1000))
  return value
end
local function used_of(key, kind, limit, period)
  if kind == 'window' or kind == 'lease' then return live(key, kind, period) end
  if kind == 'bucket' then return limit - level(key, limit, period) end
  return tonumber(redis.call('GET', key) or '0')
end
"""

_ADMIT: Final = (
    _COMMON
    + """
local used, waits, refused = {}, {}, false
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 4
  local key, kind, limit, period = KEYS[i], ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 3])
  local u = used_of(key, kind, limit, period)
  local wait = -1
  if u >= limit then
    refused = true
    wait = 0
    if kind == 'window' then
      local k = u - limit
      wait = tonumber(redis.call('ZRANGE', key, k, k, 'WITHSCORES')[2]) + period - now
    elseif kind == 'bucket' then
      wait = (u - limit) * period / limit
    end
  end
  used[i], waits[i] = u, wait
end
local out = {refused and 0 or 1}
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 4
  local key, kind, limit = KEYS[i], ARGV[j], tonumber(ARGV[j + 1])
  local amount, period = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  if refused then
    out[i + 1] = tostring(waits[i])
  elseif kind == 'window' then
    redis.call('ZADD', key, now, call)
    outlive(key, math.ceil(period * 1000) + 1000)
    out[i + 1] = tostring(used[i] + 1)
  elseif kind == 'bucket' then
    out[i + 1] = tostring(set_level(key, limit, period, limit - used[i] - amount))
  elseif kind == 'lease' then
    redis.call('ZADD', key, now + period, call)
    outlive(key, math.ceil(period * 1000) + 1000)
    out[i + 1] = tostring(used[i] + 1)
  else
    out[i + 1] = tostring(add_total(key, amount, period))
  end
end
return out
"""
)

_SETTLE: Final = (
    _COMMON
    + """
local out = {}
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 4
  local key, kind, limit = KEYS[i], ARGV[j], tonumber(ARGV[j + 1])
  local amount, period = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  if kind == 'bucket' then
    local value = math.min(limit, level(key, limit, period) - amount)
    out[i] = tostring(set_level(key, limit, period, value))
  elseif kind == 'total' then
    out[i] = tostring(add_total(key, amount, period))
  else
    if kind == 'lease' then redis.call('ZREM', key, call) end
    out[i] = tostring(live(key, kind, period))
  end
end
return out
"""
)

_RENEW: Final = (
    _COMMON
    + """
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 2
  local period = tonumber(ARGV[j + 1])
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + period, ARGV[j]) > 0 then
    outlive(KEYS[i], math.ceil(period * 1000) + 1000)
  end
end
return 0
"""
)

_READ: Final = (
    _COMMON
    + """
local out = {}
for i = 1, #KEYS do
  local j = 3 + (i - 1) * 4
  out[i] = tostring(used_of(KEYS[i], ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 3])))
end
return out
"""
)


def _args(charges: Sequence[tuple[LimitCounter, float]]) -> list[str]:
    args: list[str] = []
    for counter, amount in charges:
        args += [counter.kind, repr(counter.limit), repr(float(amount)), repr(counter.period)]
    return args


class RedisStore:
    """A :class:`meshbridge.LimitStore` in Redis, shared by every process that uses it.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
            (TLS) or ``unix://path``.
        prefix: the start of every key this store makes (``meshbridge``).
        timeout: seconds to connect and for each command before it fails.
        max_connections: connections at most; a call finding all in use
            waits for one (up to ten times ``timeout``) instead of failing.
        client: a ``redis.asyncio.Redis`` to use instead of making one from
            ``url`` (it must not decode responses); it is closed with the store.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.5,
        max_connections: int = 32,
        client: Redis | None = None,
    ) -> None:
        self.prefix = prefix
        if client is None:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout * 10,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            client = Redis.from_pool(pool)  # the client owns the pool: aclose closes both
        self._client = client
        register = self._client.register_script
        self._admit, self._settle = register(_ADMIT), register(_SETTLE)
        self._renew, self._read = register(_RENEW), register(_READ)

    @property
    def client(self) -> Redis:
        return self._client

    def _key(self, counter: LimitCounter) -> str:
        return f"{self.prefix}:{counter.key}"

    async def admit(
        self, now: float, call: str, charges: Sequence[tuple[LimitCounter, float]]
    ) -> tuple[bool, list[float]]:
        keys = [self._key(counter) for counter, _ in charges]
        reply = await self._admit(keys=keys, args=[repr(now), call, *_args(charges)])
        return bool(int(reply[0])), [float(v) for v in reply[1:]]

    async def settle(
        self, now: float, call: str, charges: Sequence[tuple[LimitCounter, float]]
    ) -> list[float]:
        keys = [self._key(counter) for counter, _ in charges]
        reply = await self._settle(keys=keys, args=[repr(now), call, *_args(charges)])
        return [float(v) for v in reply]

    async def renew(self, now: float, leases: Sequence[tuple[LimitCounter, str]]) -> None:
        if not leases:
            return
        args = [repr(now), ""]
        for counter, call in leases:
            args += [call, repr(counter.period)]
        await self._renew(keys=[self._key(counter) for counter, _ in leases], args=args)

    async def read(self, now: float, counters: Sequence[LimitCounter]) -> list[float]:
        if not counters:
            return []
        charges = [(counter, 0.0) for counter in counters]
        reply = await self._read(keys=[self._key(c) for c in counters],
                                 args=[repr(now), "", *_args(charges)])  # fmt: skip
        return [float(v) for v in reply]

    async def keys(self, prefix: str) -> list[str]:
        start = f"{self.prefix}:"
        pattern = _GLOB.sub(r"\\\1", start + prefix) + "*"
        found = {key.decode() async for key in self._client.scan_iter(match=pattern, count=1000)}
        return sorted(key[len(start) :] for key in found)

    async def first_use(self, name: str, ttl: float) -> bool:
        """Whether this is the first use of ``name`` (a signed peer request's
        nonce) within ``ttl`` seconds, across every process sharing the store:
        one ``SET NX PX``, atomic in Redis.

        Raises:
            redis.RedisError: the store did not answer.
        """
        key = f"{self.prefix}:nonce:{name}"
        return bool(await self._client.set(key, b"1", nx=True, px=max(1, round(ttl * 1000))))

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._client.ping()

    async def aclose(self) -> None:
        await self._client.aclose()
