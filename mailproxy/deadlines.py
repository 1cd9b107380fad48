"""Deadlines for the many short awaits of plugin hooks, without an event-loop timer each.

`asyncio.timeout` arms a timer of the event loop at every use, and arming and cancelling
one costs more than most hooks do (some 10 µs with uvloop, nine times per message with
the shipped plugins). A hook's timeout is there to cut off a call that hangs, seconds
after it should have ended; it need not be exact to the millisecond. So a `Watchdog`
looks at the deadlines of every call in flight on an event loop every `TICK` seconds: a
call costs a dict entry, and one that overstays is cancelled at most `TICK` after its
deadline.

Cancelling is what `asyncio.timeout` does too: the task is cancelled, the awaited call
sees CancelledError, and `Deadline.expired_alone` then tells the watchdog's
cancellation from one the task had asked for anyway (a shutdown), which must go on.
"""

from __future__ import annotations

import asyncio
import weakref

TICK = 0.05  # seconds: how late past its deadline a call is cancelled, at most


class Deadline:
    """One call's deadline; `expired` once the watchdog cancelled its task for it."""

    __slots__ = ("task", "when", "cancelling", "expired", "owner")

    def __init__(self, task: asyncio.Task, when: float, owner: _LoopDeadlines) -> None:
        self.task = task
        self.when = when
        self.owner = owner  # the deadlines of the loop it was armed on
        self.cancelling = task.cancelling()  # cancellations asked for before this call
        self.expired = False

    def expired_alone(self) -> bool:
        """Once the call has ended, however it ended: whether the watchdog cancelled it
        and nobody else asked the task to stop meanwhile. Takes the watchdog's own
        request back, so the task goes on as if it had not been cancelled (whatever the
        call raised instead of CancelledError); call it exactly once."""
        if not self.expired:
            return False
        return self.task.uncancel() <= self.cancelling


class Watchdog:
    """The deadlines of the calls in flight, kept per event loop: an engine shared by
    several loops (threads that each run one) holds each to its own clock."""

    def __init__(self, tick: float = TICK) -> None:
        self._tick = tick
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDeadlines] = (
            weakref.WeakKeyDictionary()
        )
        self._last: _LoopDeadlines | None = None  # saves the lookup with one loop per process

    def arm(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now for the running task's current call."""
        loop = asyncio.get_running_loop()
        deadlines = self._last
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._loops.get(loop)
            if deadlines is None:
                deadlines = self._loops[loop] = _LoopDeadlines(loop, self._tick)
            self._last = deadlines
        return deadlines.arm(seconds)

    @staticmethod
    def disarm(deadline: Deadline) -> None:
        """The call ended: its deadline no longer matters."""
        deadline.owner.armed.pop(deadline, None)

    def __len__(self) -> int:
        return sum(len(deadlines.armed) for deadlines in self._loops.values())


class _LoopDeadlines:
    """One loop's armed deadlines, and its check every `tick` while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self.loop = loop
        self._tick = tick
        self.armed: dict[Deadline, None] = {}  # insertion-ordered set
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, seconds: float) -> Deadline:
        deadline = Deadline(asyncio.current_task(), self.loop.time() + seconds, self)
        self.armed[deadline] = None
        if self._timer is None:
            self._timer = self.loop.call_later(self._tick, self._check)
        return deadline

    def _check(self) -> None:
        self._timer = None
        now = self.loop.time()
        for deadline in [d for d in self.armed if d.when <= now]:
            del self.armed[deadline]
            deadline.expired = True
            deadline.task.cancel()
        if self.armed:
            self._timer = self.loop.call_later(self._tick, self._check)
