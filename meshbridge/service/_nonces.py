"""Where a server remembers the peer signatures it accepted, so that each is
accepted once: one server, however many workers it runs, and across their
restarts.

:class:`NonceStore` is the whole interface, one async method, so the store
can live where the server's processes can all reach it:

* :class:`LocalNonces`: in this process (``serve``, and the supervisor of
  ``serve --workers``, which answers its workers from one).
* the workers' store of ``serve --workers`` (``_workers.py``) asks the
  supervisor over the worker's control socket; a restarted worker asks the
  same supervisor, which remembers what the worker it replaces accepted.
* a store shared by replicas (Redis ``SET key 1 NX EXAT expires``, say)
  implements the same method.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from typing import Protocol

from meshbridge.providers import NonceCache, SignatureError

__all__ = ["LocalNonces", "NonceStore", "NoncesFull", "SharedNonces"]

log = logging.getLogger("meshbridge")


class NoncesFull(Exception):
    """The store holds as many live nonces as it may: refuse (503), never forget one early."""


class NonceStore(abc.ABC):
    """The nonces of accepted peer signatures (see ``_peer_auth.py``)."""

    @abc.abstractmethod
    async def first_use(self, key_id: str, nonce: str, expires: float) -> bool:
        """Record that a signature of key ``key_id`` with ``nonce`` was accepted.

        Args:
            key_id: the key id that signed it.
            nonce: its nonce.
            expires: the Unix time after which its timestamp alone refuses it:
                the store must remember it at least until then.

        Returns:
            True the first time, False for every later use (a replay).

        Raises:
            NoncesFull: the store cannot remember one more (answered 503).
            OSError, TimeoutError: the store cannot be reached (answered 503).
        """


class LocalNonces(NonceStore):
    """The nonces accepted in this process, in a bounded :class:`NonceCache`.

    Args:
        cache: the cache (250,000 nonces of the last minute by default).
        clock: the Unix time (``time.time``).
    """

    def __init__(
        self, cache: NonceCache | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.cache = cache if cache is not None else NonceCache()
        self._clock = clock

    async def first_use(self, key_id: str, nonce: str, expires: float) -> bool:
        return self.first_use_now(key_id, nonce)

    def first_use_now(self, key_id: str, nonce: str) -> bool:
        """:meth:`first_use`, for a caller that cannot wait (the supervisor's
        answer to a worker). The cache keeps every nonce for twice the clock
        skew a signature may have, which covers ``expires``."""
        try:
            self.cache.remember(f"{key_id} {nonce}", self._clock())
        except SignatureError as exc:
            if exc.reason == "overloaded":
                raise NoncesFull(str(exc)) from None
            return False
        return True


class FirstUse(Protocol):
    """A shared store's atomic "first use of this name within ttl seconds"."""

    async def first_use(self, name: str, ttl: float) -> bool: ...


class SharedNonces(NonceStore):
    """Nonces in the store shared by every replica (``[store] url``: Redis),
    so a signature replayed to another replica is refused too.

    When the store does not answer, the nonce is checked in ``fallback``
    (this server's own store) and a warning is logged once per outage: a
    replay to another replica may pass meanwhile, a replay to this one never.

    Args:
        store: the shared store (``RedisStore``).
        fallback: the server's own nonce store.
        clock: the Unix time (``time.time``).
    """

    def __init__(
        self, store: FirstUse, fallback: NonceStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self._fallback = fallback
        self._clock = clock
        self._down = False

    async def first_use(self, key_id: str, nonce: str, expires: float) -> bool:
        ttl = max(expires - self._clock(), 1.0)
        try:
            first = await self.store.first_use(f"{key_id}:{nonce}", ttl)
        except Exception as exc:  # the store's errors: redis.RedisError, OSError...
            if not self._down:
                self._down = True
                log.warning(
                    "the shared store does not answer (%s): peer nonces are checked by this "
                    "server alone until it does",
                    type(exc).__name__,
                )
            return await self._fallback.first_use(key_id, nonce, expires)
        if self._down:
            self._down = False
            log.info("the shared store answers again: peer nonces are shared again")
        # the server's own store too, so that an outage later still knows this one
        await self._fallback.first_use(key_id, nonce, expires)
        return first
