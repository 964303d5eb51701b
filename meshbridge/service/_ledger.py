"""The usage ledger: every call the mesh ends, recorded in SQLite or PostgreSQL.

Rules of the ledger:

1. Requests never wait for it. :meth:`Ledger.record` runs on the event
   loop: it appends to a bounded queue and returns; past ``queue_size``
   waiting records it drops the record and counts it
   (``meshbridge_ledger_dropped_total{reason="queue_full"}``).
2. One writer thread per ledger takes the queue in batches of at most
   ``batch_size``, every ``flush_interval`` or as soon as a batch is full,
   and writes each batch in one transaction.
3. When a write fails, the database counts as down: batches go to the
   local spool (``_ledger_spool.py``) until a reconnect succeeds (tried
   after 0.25 s, doubling to 5 s); then the spool is replayed into it. What
   the spool cannot hold is dropped and counted (``spool_full``). A batch
   refused while the database answers is written record by record, and a
   record it still refuses is dropped and counted (``rejected``).
4. Prompts are stored only with ``record_prompts``: redacted first (a hook
   that raises stores no prompt), then cut to ``prompt_max_chars``, before
   they reach the database or the spool.
5. :meth:`Ledger.flush` returns once every record queued before it was
   written or spooled; :meth:`Ledger.aclose` flushes, then stops the thread.
6. Rows older than ``retention_days`` are deleted in the background, once
   an hour, from the writer thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from meshbridge import CallRecord

from ._ledger_config import LedgerConfig, database_url
from ._ledger_metrics import LedgerMetrics
from ._ledger_spool import Spool, spool_dir
from ._ledger_store import Store
from ._private_dir import state_dir

__all__ = ["Ledger"]

log = logging.getLogger("meshbridge.ledger")

_FIRST_RETRY: Final = 0.25
_MAX_RETRY: Final = 5.0
_PRUNE_EVERY: Final = 3600.0
_JOIN_TIMEOUT: Final = 30.0  # a database that hangs past this is left to the daemon thread


class Ledger:
    """A :class:`meshbridge.LedgerSink` that stores each call in a database.

    Args:
        config: the ``[ledger]`` settings (defaults: SQLite in the state directory).
        registry: where ``meshbridge_ledger_*`` metrics go: the mesh's.
        clock: wall-clock seconds, for the retention cutoff (``time.time``).
        spool_base: where the spool directory goes (the state directory).

    Use it as ``Mesh(ledger=Ledger(config, registry=registry), registry=registry)``;
    the mesh starts and closes it.
    """

    def __init__(
        self,
        config: LedgerConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        spool_base: Path | None = None,
    ) -> None:
        self.config = config if config is not None else LedgerConfig()
        self.record_prompts = self.config.record_prompts
        self.url = database_url(self.config)
        self._clock = clock
        self._spool_base = spool_base
        self._queue: deque[CallRecord] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards _flushes
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._appended = 0  # by the loop
        self._handled = 0  # by the writer
        self._closed = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: Store | None = None
        self._spool: Spool | None = None
        self._up = False
        self._outage = False  # logged as unavailable, not yet back
        self._retry_at = 0.0
        self._retry_in = _FIRST_RETRY
        self._next_prune = 0.0
        self.metrics = LedgerMetrics(
            registry,
            queue_depth=lambda: len(self._queue),
            spool=self._spool_size,
            database_up=lambda: self._up,
        )

    def __repr__(self) -> str:
        return f"<Ledger {self.where} queued={len(self._queue)}>"

    # -- the sink ------------------------------------------------------------------

    def record(self, record: CallRecord) -> None:
        """Queue ``record`` for the writer (rule 1); never blocks."""
        if self._closed:
            self.metrics.dropped["closed"] += 1
            return
        if len(self._queue) >= self.config.queue_size:
            self.metrics.dropped["queue_full"] += 1
            return
        self._queue.append(record)
        self._appended += 1
        if len(self._queue) >= self.config.batch_size:
            self._wake.set()

    async def start(self) -> None:
        """Open the database (upgrading its schema) and the spool, and start
        the writer. A database that cannot be reached is logged and retried:
        meanwhile records go to the spool."""
        if self._thread is not None:
            raise RuntimeError("the ledger has started already")
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._run, name="meshbridge-ledger", daemon=True)
        self._thread.start()

    async def flush(self) -> None:
        """Return once every record queued so far is written or spooled (rule 5)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._flushes.append((self._appended, done))
        self._wake.set()
        await done

    async def aclose(self) -> None:
        """Write (or spool) what is queued, then stop the writer. Idempotent."""
        self._closed = True
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join, _JOIN_TIMEOUT)
        if thread.is_alive():
            log.error("ledger: the database did not answer in %gs; closing anyway", _JOIN_TIMEOUT)

    def reconfigure(self, config: LedgerConfig) -> list[str]:
        """Take a reloaded config's prompt and retention settings; returns
        the keys that changed but need a restart (url, enabled, bounds, and
        ``record_prompts`` turned on: the mesh reads it once, when it is made)."""
        live = ["prompt_max_chars", "redact", "retention_days"]
        if not config.record_prompts:
            live.append("record_prompts")  # stored prompts stop at once
        changes = {key: getattr(config, key) for key in live}
        restart = [
            f.name
            for f in dataclasses.fields(config)
            if f.name not in live and getattr(config, f.name) != getattr(self.config, f.name)
        ]
        self.config = dataclasses.replace(self.config, **changes)
        self.record_prompts = self.config.record_prompts
        self._next_prune = 0.0
        return restart

    async def prune(self) -> int:
        """Delete the rows older than ``retention_days`` now; returns how many."""
        return await asyncio.to_thread(self._prune)

    # -- the writer thread -----------------------------------------------------------

    def _open(self) -> None:
        base = self._spool_base if self._spool_base is not None else state_dir()
        if self.config.spool_max_bytes:
            try:
                self._spool = Spool(spool_dir(base, self.url), self.config.spool_max_bytes)
            except Exception as exc:
                log.error("ledger: no spool (%s): records the database misses are lost", exc)
        self._connect()

    def _connect(self) -> None:
        try:
            if self._store is None:
                self._store = Store(self.url)
            self._store.migrate()
            replayed = 0
            if self._spool is not None:
                replayed = self._spool.replay(self._insert, self.config.batch_size)
                replayed += self._spool.adopt(self._insert, self.config.batch_size)
        except Exception as exc:
            self._failed(exc)
            return
        self._up, self._retry_in = True, _FIRST_RETRY
        self.metrics.replayed += replayed
        if self._outage or replayed:
            log.info("ledger: writing to %s again, %d spooled records replayed", self.where,
                     replayed)  # fmt: skip
        self._outage = False

    @property
    def where(self) -> str:
        """The database it writes to, as a log line may name it: a SQLite
        file's path, or a URL without its password."""
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            return url.database or ""
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)

    def _failed(self, exc: BaseException) -> None:
        self.metrics.write_errors += 1
        if not self._outage:
            log.warning("ledger: %s is unavailable, spooling: %s", self.where, _one_line(exc))
        self._up, self._outage = False, True
        self._retry_at = time.monotonic() + self._retry_in
        self._retry_in = min(self._retry_in * 2, _MAX_RETRY)

    def _insert(self, records: list[CallRecord]) -> None:
        assert self._store is not None
        self._store.insert(records)
        self.metrics.written += len(records)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.config.flush_interval)
                self._wake.clear()
                stopping = self._stopping
                self._cycle()
                if stopping and not self._queue:
                    break
        finally:  # whatever happened, flush() and aclose() must not wait for ever
            if self._spool is not None:
                self._spool.close()
            if self._store is not None:
                self._store.dispose()
            self._resolve_flushes(everything=True)

    def _cycle(self) -> None:
        if not self._up and time.monotonic() >= self._retry_at:
            self._connect()
        while self._queue:
            count = min(len(self._queue), self.config.batch_size)
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                self._write([self._prepared(record) for record in batch])
            except Exception:  # a bug must not stop the writer: count the batch, go on
                log.exception("ledger: %d records lost", count)
                self.metrics.dropped["rejected"] += count
            self._handled += count
        self._resolve_flushes()
        if self._up and self.config.retention_days and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + _PRUNE_EVERY
            self._prune()

    def _write(self, batch: list[CallRecord]) -> None:
        if self._up:
            try:
                self._insert(batch)
                return
            except Exception as exc:
                if self._answers():
                    self._one_by_one(batch, exc)
                    return
                self._failed(exc)
        kept = 0
        if self._spool is not None:
            try:
                kept = self._spool.append(batch)
            except OSError as exc:  # a full disk: what is not kept is counted below
                log.error("ledger: cannot write the spool %s: %s", self._spool.path, exc)
        self.metrics.spooled += kept
        self.metrics.dropped["spool_full"] += len(batch) - kept

    def _answers(self) -> bool:
        try:
            assert self._store is not None
            self._store.revision()
        except Exception:
            return False
        return True

    def _one_by_one(self, batch: list[CallRecord], exc: BaseException) -> None:
        log.warning("ledger: the database refused a batch, retrying its records one by one: %s",
                    _one_line(exc))  # fmt: skip
        for record in batch:
            try:
                self._insert([record])
            except Exception as refused:
                self.metrics.dropped["rejected"] += 1
                log.error("ledger: call %s refused: %s", record.id, _one_line(refused))

    def _prepared(self, record: CallRecord) -> CallRecord:
        """``record`` with its prompt as it may be stored (rule 4)."""
        prompt = record.prompt
        if prompt is None:
            return record
        config = self.config
        if not config.record_prompts:
            prompt = None
        elif config.redact is not None:
            redacted: object = None  # typed as a hook should return; checked as any may
            try:
                redacted = config.redact(prompt)
            except Exception:
                log.exception("ledger: the redact hook raised; the prompt is not stored")
            if redacted is not None and not isinstance(redacted, str):
                log.error("ledger: the redact hook returned %s, not a str or None; "
                          "the prompt is not stored", type(redacted).__name__)  # fmt: skip
            prompt = redacted if isinstance(redacted, str) else None
        if prompt is not None:
            prompt = prompt[: config.prompt_max_chars]
        return dataclasses.replace(record, prompt=prompt)

    def _prune(self) -> int:
        if self._store is None or not self.config.retention_days:
            return 0
        cutoff = self._clock() - self.config.retention_days * 86400
        try:
            deleted = self._store.prune(datetime.fromtimestamp(cutoff, UTC))
        except Exception as exc:
            log.warning("ledger: pruning failed: %s", _one_line(exc))
            return 0
        self.metrics.pruned += deleted
        return deleted

    def _resolve_flushes(self, *, everything: bool = False) -> None:
        with self._lock:
            done = [f for n, f in self._flushes if everything or n <= self._handled]
            self._flushes = [(n, f) for n, f in self._flushes if f not in done]
        if done and self._loop is not None and not self._loop.is_closed():
            for future in done:
                self._loop.call_soon_threadsafe(_resolve, future)

    def _spool_size(self) -> tuple[int, int]:
        spool = self._spool
        return (spool.records, spool.bytes) if spool is not None else (0, 0)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
