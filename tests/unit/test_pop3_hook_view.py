"""What the pop3_command hook is shown of a command: never a credential, however the
client sends it."""

from __future__ import annotations

import pytest

from mailproxy.protocol.pop3 import Pop3ServerMachine
from mailproxy.proxy.pop3_session import hook_view


def view(line: bytes):
    machine = Pop3ServerMachine()
    machine.receive_data(line + b"\r\n")
    return hook_view(machine.next_event())


@pytest.mark.parametrize("line, shown", [
    (b"PASS alice-secret", ("PASS", ())),
    (b"PASS\talice-secret", ("OTHER", ())),  # a tab: no verb POP3 knows
    (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", ("AUTH", ("PLAIN",))),
    (b"AUTH AGFsaWNlAHNlY3JldA==", ("AUTH", ("OTHER",))),  # a response where the mechanism goes
    (b"AUTH YWxpY2U", ("AUTH", ("OTHER",))),
    (b"AUTH cram-md5", ("AUTH", ("CRAM-MD5",))),
    (b"AGFsaWNlAHNlY3JldA==", ("OTHER", ())),  # a SASL response sent as a command
    (b"APOP alice@example.test 0123456789abcdef0123456789abcdef", ("APOP", ("alice@example.test",))),
    (b"RETR 1", ("RETR", ("1",))),
    (b"USER alice@example.test", ("USER", ("alice@example.test",))),
])
def test_hooks_never_see_credentials(line, shown):
    assert view(line) == shown
