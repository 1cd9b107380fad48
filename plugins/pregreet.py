"""pregreet: a client that talks before the greeting, as Postfix's postscreen finds it
(postscreen_greet_wait, postscreen_greet_action).

    [plugin.pregreet]
    greet_wait = 3.0          # seconds the client must stay silent after connecting
    early_talker = "reject"   # "reject", "tempfail", "off" or a number of points
    timeout = 5.0             # the hook's limit: must be more than greet_wait

An SMTP client says nothing until the server's greeting (RFC 5321 3.1, 4.3.2); mail
software waits for it, while many spam bots send EHLO, or a whole transaction, at once
to save the round trip. At connect the plugin waits until `greet_wait` seconds have
passed since the client connected (the client's name lookup and the connect hooks
before this one count, so their time overlaps the wait) and then:

- early_talker, the client sent something: "reject" answers
  `554 5.5.1 Protocol error: talked before the greeting` instead of the greeting,
  "tempfail" `421 4.5.1 <hostname> Protocol error: ...`; either ends the session and
  no upstream session is opened. With points, the session goes on: the client gets the
  upstream's greeting, then what it sent early is answered, as if it had waited. "off"
  turns the check off: nobody waits.
- left, the client hung up during the wait (bots often do): counted; the proxy opens no
  upstream session for a client that is gone.
- patient: greeted as usual, `greet_wait` seconds after it connected.

Counted in `mailproxy_plugin_checks_total{plugin="pregreet", check="pregreet"}` with
result `early_talker`, `patient` or `left`.

The cost: every session it judges is greeted `greet_wait` seconds late, and holds its
connection (one of the listener's `max_connections`) that much longer. Postfix waits
6 s (2 s under stress), but only once a day per client, since postscreen remembers who
passed; this plugin remembers nobody and waits every time, so its default is 3 s: bots
that talk early mostly do so at once. Sessions it does not judge, on listener modes
outside `modes` or from `skip_clients` (loopback and private networks by default), are
greeted without waiting.

Postscreen can also send the first line of a multi-line greeting (`220-...`) and catch
clients that speak before its last line. Not here: the greeting is the upstream's, known
only once the upstream session is open, which is what an early talker must not cost; and
a `220-` line of the proxy's own would show the proxy, and could precede a greeting of
`421` or `554`, while the lines of one reply share one code.
"""

from __future__ import annotations

import logging
import time

from pydantic import Field, ValidationInfo, field_validator

from mailproxy import Session, Verdict, hookimpl

from ._common import Action, ClientCheckSettings, ClientFilter, count, verdict, within_hook_timeout

PLUGIN = "pregreet"
TEXT = "Protocol error: talked before the greeting"
# What Session.wait_for_client heard -> the result counted.
_RESULTS = {"spoke": "early_talker", "left": "left", "silent": "patient"}

log = logging.getLogger("mailproxy.plugin.pregreet")


class Plugin:
    class Config(ClientCheckSettings):
        # Checked against `timeout` when left out too: `timeout = 2` alone is refused.
        greet_wait: float = Field(3.0, gt=0, le=60, validate_default=True)
        early_talker: Action = "reject"

        @field_validator("greet_wait")
        @classmethod
        def _inside_the_hook(cls, value: float, info: ValidationInfo) -> float:
            return within_hook_timeout(value, info)

    def __init__(self, settings: Config, context) -> None:
        self._settings = settings
        self._filter = ClientFilter(settings)

    @hookimpl
    async def smtp_connect(self, session: Session) -> Verdict | None:
        settings = self._settings
        # wait_for_client is None outside a proxy session (a script of mailproxy.testing).
        if settings.early_talker == "off" or session.wait_for_client is None or self._filter.skips(session):
            return None
        waited = time.monotonic() - session.started
        heard = await session.wait_for_client(max(0.0, settings.greet_wait - waited))
        result = _RESULTS[heard]
        count(PLUGIN, "pregreet", result)
        if result != "early_talker":
            return None
        log.info("the client talked %.2fs after connecting, before its greeting", time.monotonic() - session.started)
        return verdict(
            settings.early_talker,
            "PREGREET",
            reject=Verdict.reject(554, "5.5.1", TEXT),
            tempfail=Verdict.tempfail(421, "4.5.1", TEXT),
        )
