#!/usr/bin/env python3
"""What the ratelimit plugin waits for with the redis backend, per message.

    python bench/ratelimit_redis.py [--messages N]

Starts a redis-server on a loopback port, and one ratelimit plugin on it with its five
client and sender-domain limits on (none ever reached), as the mailproxy-plugins target
of smtp_throughput.py has them. Then plays N messages, each a connection, a MAIL and a
RCPT (the three events the plugin counts), one after the other, and prints the time per
message and the Redis commands per message (from the server's INFO). The plugin waits
for Redis at every event: the figure is mostly round trips, so run it at two versions
of the code to compare how many each makes. Needs redis-server; loopback only, bounded
by N.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailproxy import PluginContext  # noqa: E402
from mailproxy.state_redis import RedisState  # noqa: E402
from mailproxy_plugins.ratelimit import Plugin  # noqa: E402
from tests.support.plugins import client_session, sender_envelope  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402

CLIENT, SENDER = "192.0.2.1", "sender@bench.example"
NEVER = 10**9  # a limit no run reaches
LIMITS = ("client_connections", "client_messages", "client_recipients",
          "sender_domain_messages", "sender_domain_recipients")


async def play(url: str, messages: int, commands) -> tuple[float, int]:
    """Seconds per message, and Redis commands per message."""
    state = RedisState(url, timeout=5.0)
    try:
        settings = Plugin.Config(skip_clients=[], **{limit: NEVER for limit in LIMITS})
        plugin = Plugin(settings, PluginContext(state, None, logging.getLogger("bench")))
        session, envelope = client_session(CLIENT), sender_envelope(SENDER)
        await plugin.smtp_connect(session=session)  # connected, keys in place
        before, started = commands(), time.perf_counter()
        for _ in range(messages):
            for verdict in (await plugin.smtp_connect(session=session),
                            await plugin.smtp_mail(session=session, address=SENDER),
                            await plugin.smtp_rcpt(session=session, envelope=envelope)):
                if verdict is not None:
                    raise SystemExit(f"a limit was reached: {verdict}")
        elapsed = time.perf_counter() - started
        return elapsed / messages, (commands() - before - 1) // messages  # less INFO itself
    finally:
        await state.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    with RedisServer() as server:
        client = server.client()
        seconds, commands = asyncio.run(
            play(server.url, args.messages, lambda: client.info("stats")["total_commands_processed"]))
    print(f"ratelimit, redis backend, {len(LIMITS)} limits: {seconds * 1e6:,.0f} µs per message "
          f"(connect, MAIL, RCPT), {commands} Redis commands per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
