"""A real Redis for tests: redis-server on 127.0.0.1 with a free port, no persistence,
stopped at the end. It can be stopped and started again on the same port, to show what
the proxy does while its state backend is gone and once it is back.

`Backend` gives a test fresh state on either backend, so that one test runs on both.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import redis

from mailproxy.state import MemoryState
from mailproxy.state_redis import RedisState
from tests.support.clock import Clock
from tests.support.servers import free_port, wait_for_port

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._directory = Path(tempfile.mkdtemp(prefix="redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self._directory), "--logfile", str(self._directory / "log"),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        wait_for_port("127.0.0.1", self.port, timeout=10, process=self.process)
        return self

    def stop(self) -> None:
        """Stop the server (its data is gone); stopping twice is harmless."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self):
        """A synchronous client, for a test to look at what the proxy stored."""
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)


class Backend:
    """Fresh shared state of one backend for a test: "memory" (whose expiries follow
    `clock`) or "redis" (on `server`, under a key prefix of its own). Each `state()` is
    what one worker process has: the same MemoryState, or another Redis client. Make and
    close it inside the test's event loop."""

    def __init__(self, kind: str, server: RedisServer, clock: Clock) -> None:
        self.kind = kind
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex}:"
        self._memory = MemoryState(clock=clock) if kind == "memory" else None
        self._states = []

    def state(self):
        if self._memory is not None:
            return self._memory
        state = RedisState(self.server.url, key_prefix=self.prefix, timeout=5.0)
        self._states.append(state)
        return state

    def keys(self) -> list[str]:
        """The keys stored in Redis, with the prefix."""
        return sorted(self.server.client().keys(f"{self.prefix}*"))

    async def close(self) -> None:
        for state in self._states:
            await state.close()
