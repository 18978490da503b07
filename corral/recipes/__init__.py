"""Coordination recipes on the public client API: locks, read/write locks, semaphores, barriers,
double barriers, group membership, leader election, configuration, rendezvous, queues, counters.

Each recipe is an asyncio class taking an `AsyncClient`, with a blocking twin (`Blocking...`) taking a
blocking `Client` that runs the same implementation on the client's event-loop thread. Every key a
recipe writes lives under `/corral/<recipe>/<name>/`; each module's docstring gives its key layout
and guarantees. Every wait takes a `timeout` and raises `WaitTimeout` when it passes.
"""

from corral.recipes._base import DEFAULT_TTL_S, WAIT_TIMEOUT_S, WaitTimeout
from corral.recipes._blocking import close_session_sync, open_session
from corral.recipes._queued import Entry
from corral.recipes.barrier import Barrier, BlockingBarrier, BlockingDoubleBarrier, DoubleBarrier
from corral.recipes.config import BlockingConfig, BlockingRendezvous, Config, ConfigChange, Rendezvous
from corral.recipes.counter import BlockingCounter, Counter
from corral.recipes.election import BlockingLeaderElection, Leader, LeaderElection
from corral.recipes.group import BlockingGroupMembership, Change, GroupMembership, Member, MembershipEvent
from corral.recipes.lock import BlockingLock, BlockingReadWriteLock, Lock, ReadWriteLock
from corral.recipes.queue import BlockingQueue, Item, Queue
from corral.recipes.semaphore import BlockingSemaphore, Semaphore

__all__ = [
    "DEFAULT_TTL_S",
    "WAIT_TIMEOUT_S",
    "Barrier",
    "BlockingBarrier",
    "BlockingConfig",
    "BlockingCounter",
    "BlockingDoubleBarrier",
    "BlockingGroupMembership",
    "BlockingLeaderElection",
    "BlockingLock",
    "BlockingQueue",
    "BlockingReadWriteLock",
    "BlockingRendezvous",
    "BlockingSemaphore",
    "Change",
    "Config",
    "ConfigChange",
    "Counter",
    "DoubleBarrier",
    "Entry",
    "GroupMembership",
    "Item",
    "Leader",
    "LeaderElection",
    "Lock",
    "Member",
    "MembershipEvent",
    "Queue",
    "ReadWriteLock",
    "Rendezvous",
    "Semaphore",
    "WaitTimeout",
    "close_session_sync",
    "open_session",
]
