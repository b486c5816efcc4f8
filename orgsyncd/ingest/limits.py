"""What bounds the SFTP server's resources: one write-behind budget for all uploads, one pool for
the SSH receive windows of all channels, and the gate every new connection passes (per-address
caps, and sshd's ``MaxStartups`` idea for connections that have not logged in yet).

Both live on the event loop and are not thread-safe; the gate takes its clock as a parameter.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable
from dataclasses import dataclass


class WriteBudget:
    """Bytes all uploads together may hold queued for the disk.

    A write that does not fit waits (FIFO, so a large writer cannot starve small ones); while it
    waits its session reads no further requests, its SSH channel window is not refilled, and the
    client stops sending. Memory therefore stays bounded however many uploads run at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._available = capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.capacity - self._available

    def cost(self, size: int) -> int:
        """What a write of *size* bytes takes: a write larger than the whole budget takes all of
        it (it waits for every other write to land, but is never stuck)."""
        return min(size, self.capacity)

    async def acquire(self, size: int) -> None:
        cost = self.cost(size)
        if not self._waiters and self._available >= cost:
            self._available -= cost
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (cost, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(cost)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # the next one in line may fit now
            raise

    def release(self, size: int) -> None:
        self._available += self.cost(size)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._available:
            cost, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._available -= cost
            waiter.set_result(None)


class WindowPool:
    """The SSH receive windows of all channels, out of one pool.

    A channel's window is what its client may send before being asked for more, so up to twice
    that (asyncssh's channel and stream buffers) can sit in memory per channel. Each new channel
    gets an eighth of what is free, between *min_window* and *max_window*: a single upload keeps
    asyncssh's full 2 MiB window and its speed, while hundreds at once share the pool and each
    gets less. The floor means the pool can be overdrawn by *min_window* per channel.
    """

    def __init__(self, capacity: int, min_window: int = 64 * 1024, max_window: int = 2 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.min_window = min_window
        self.max_window = max_window
        self.in_use = 0

    def take(self) -> int:
        free = max(self.capacity - self.in_use, 0)
        window = min(max(free // 8, self.min_window), self.max_window)
        window -= window % self.min_window  # whole steps: a few distinct sizes, easy to read in logs
        self.in_use += window
        return window

    def give(self, window: int) -> None:
        self.in_use -= window


@dataclass(frozen=True, slots=True)
class GateLimits:
    """0 means no limit."""

    max_connections: int = 0
    max_connections_per_address: int = 0
    max_startups: int = 0
    max_startups_per_address: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """The gate's answer: admitted or not (*refused* names the limit); *evict* is a connection
    still logging in that must be dropped to make room."""

    refused: str | None = None
    evict: Hashable | None = None

    @property
    def admitted(self) -> bool:
        return self.refused is None


class ConnectionGate:
    """Counts connections per address, and those not yet logged in ("startups").

    A new connection is refused outright when its address already has too many connections or
    too many startups: one address cannot crowd out the others. When the server as a whole is
    full, the *oldest* startup is dropped for the newcomer instead of refusing it (sshd refuses
    newcomers at random, which lets a flood of half-open handshakes lock everyone out): a
    flood's connections are the old, stalled ones, and a tenant logging in is the new one.
    Logged-in connections are never dropped to make room.
    """

    def __init__(self, limits: GateLimits) -> None:
        self.limits = limits
        self._peer_of: dict[Hashable, str] = {}
        self._startups: dict[Hashable, None] = {}  # insertion order: oldest first
        self._per_address: collections.Counter[str] = collections.Counter()
        self._startups_per_address: collections.Counter[str] = collections.Counter()

    def configure(self, limits: GateLimits) -> None:
        """New limits (SIGHUP) apply to the next connections; nobody is dropped for them."""
        self.limits = limits

    @property
    def connections(self) -> int:
        return len(self._peer_of)

    @property
    def startups(self) -> int:
        return len(self._startups)

    def admit(self, key: Hashable, peer: str) -> Admission:
        limits = self.limits
        if _reached(self._per_address[peer], limits.max_connections_per_address):
            return Admission(refused="max_connections_per_address")
        if _reached(self._startups_per_address[peer], limits.max_startups_per_address):
            return Admission(refused="max_startups_per_address")
        evict: Hashable | None = None
        full = _reached(self.connections, limits.max_connections)
        if full or _reached(self.startups, limits.max_startups):
            evict = next(iter(self._startups), None)
            if evict is None:
                return Admission(refused="max_connections")  # everyone is logged in and busy
            self.release(evict)
        self._peer_of[key] = peer
        self._per_address[peer] += 1
        self._startups[key] = None
        self._startups_per_address[peer] += 1
        return Admission(evict=evict)

    def logged_in(self, key: Hashable) -> None:
        if key in self._startups:
            del self._startups[key]
            self._decrement(self._startups_per_address, self._peer_of[key])

    def release(self, key: Hashable) -> None:
        """The connection is gone (or being dropped); safe to call more than once."""
        self.logged_in(key)
        peer = self._peer_of.pop(key, None)
        if peer is not None:
            self._decrement(self._per_address, peer)

    @staticmethod
    def _decrement(counter: collections.Counter[str], peer: str) -> None:
        counter[peer] -= 1
        if counter[peer] <= 0:
            del counter[peer]


def _reached(count: int, limit: int) -> bool:
    return limit > 0 and count >= limit
