"""Write-behind for one upload: SFTP writes are acknowledged once queued, and land in order.

SFTP serves one request at a time per session. Waiting for a thread to ``pwrite`` each 32 KiB
packet (paramiko's size) costs a thread round trip per packet, which measured at ~40% of upload
throughput. Instead :meth:`UploadWriter.write` queues the bytes and returns; one job at a time in the
I/O thread pool applies everything queued so far. The queue is bounded twice (backpressure:
``write`` waits): per upload, and by the server-wide :class:`~orgsyncd.ingest.limits.WriteBudget`
every queued byte is taken from until it is on disk, so all uploads together hold at most that
much. A failed write is raised by the next ``write`` and by :meth:`settle`, and
the caller settles before it reads, stats, commits or discards the file. Nothing is lost by
acknowledging early: a file is published only by a close that settled without error.

Written bytes are also pushed to disk (``flush``) in the background every ``flush_every`` bytes,
so the disk works while the network does and the fsync at commit has little left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

from orgsyncd.ingest.limits import WriteBudget

Chunk = tuple[int, bytes]
Runner = Callable[[Callable[[], None]], Awaitable[None]]


class UploadWriter:
    def __init__(
        self,
        run: Runner,
        apply: Callable[[list[Chunk]], None],
        flush: Callable[[], None],
        *,
        budget: WriteBudget,
        max_queued: int,
        flush_every: int,
    ) -> None:
        self._run = run
        self._budget = budget
        self._apply = apply
        self._flush = flush
        self._max_queued = max_queued
        self._flush_every = flush_every
        self._queue: list[Chunk] = []
        self._queued = 0
        self._unflushed = 0
        self._error: OSError | None = None
        self._drainer: asyncio.Future[None] | None = None
        self._flusher: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()

    async def write(self, offset: int, data: bytes) -> None:
        """Queue *data* at *offset*; waits only while the queue or the budget is full."""
        self._raise_error()
        await self._budget.acquire(len(data))
        if self._error is not None:  # failed while we waited: nothing more will be written
            self._budget.release(len(data))
            self._raise_error()
        self._queue.append((offset, data))
        self._queued += len(data)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        while self._queued > self._max_queued and self._error is None:
            self._progress.clear()
            await self._progress.wait()
        self._raise_error()

    async def settle(self) -> None:
        """Wait until every queued write is applied and no flush runs; raise a write error."""
        if self._drainer is not None:
            await self._drainer
        if self._flusher is not None:
            # The commit fsyncs anyway; a failed background flush changes nothing.
            with contextlib.suppress(OSError):
                await self._flusher
        self._raise_error()

    async def _drain(self) -> None:
        while self._queue and self._error is None:
            batch, self._queue = self._queue, []
            size = sum(len(data) for _, data in batch)
            try:
                await self._run(functools.partial(self._apply, batch))
            except OSError as exc:
                self._error = exc
                self._give_back(batch)
            except BaseException:
                self._give_back(batch)  # cancelled at shutdown: the budget must not leak
                raise
            else:
                self._queued -= size
                self._note_written(size)
                self._release(batch)
            self._progress.set()

    def _give_back(self, batch: list[Chunk]) -> None:
        """After a failure nothing queued will be written: drop it, and its share of the budget."""
        self._release(batch + self._queue)
        self._queue = []
        self._queued = 0

    def _release(self, chunks: list[Chunk]) -> None:
        for _, data in chunks:
            self._budget.release(len(data))

    def _note_written(self, size: int) -> None:
        self._unflushed += size
        if self._unflushed < self._flush_every:
            return
        if self._flusher is not None and not self._flusher.done():
            return  # still flushing; the next batch will start another
        if self._flusher is not None and not self._flusher.cancelled():
            self._flusher.exception()  # collected so asyncio does not log it; see settle()
        self._unflushed = 0
        self._flusher = asyncio.ensure_future(self._run(self._flush))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
