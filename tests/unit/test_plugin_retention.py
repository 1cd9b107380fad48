"""retention: which POP3 and IMAP commands a protected account may not send. The IMAP
arguments come from the proxy's own command machine, as the hook gets them."""

from __future__ import annotations

import pytest

from mailproxy.protocol.imap import Command, ImapServerMachine
from mailproxy.session import Session
from mailproxy_plugins.retention import Plugin

PROTECTED = "archive@example.test"


def plugin(**settings) -> Plugin:
    config = Plugin.Config(**{"accounts": [PROTECTED, "@legal.example.test"], **settings})
    return Plugin(config, None)


def session(username: str | None = PROTECTED) -> Session:
    s = Session("imap", "imap")
    s.authenticated, s.username = username is not None, username
    return s


def parsed(line: bytes) -> Command:
    machine = ImapServerMachine()
    machine.receive_data(line + b"\r\n")
    command = machine.next_event()
    assert isinstance(command, Command), command
    return command


def refused(line: bytes, who: Session | None = None, **settings) -> bool:
    command = parsed(line)
    verdict = plugin(**settings).imap_command(who or session(), command.verb, command.args)
    return verdict is not None and verdict.reply.text == "Deletion is not permitted for this account"


@pytest.mark.parametrize("line", [
    b"a STORE 1 +FLAGS (\\Deleted)",
    b"a STORE 1:* +FLAGS.SILENT (\\Seen \\deleted)",
    b"a UID STORE 5 +FLAGS \\Deleted",  # a single flag, no list
    b"a STORE 1 FLAGS (\\Deleted)",  # replacing the flags with a list that has it
    b"a STORE 1 (UNCHANGEDSINCE 12) +FLAGS (\\Deleted)",  # CONDSTORE's modifier
    b"a EXPUNGE",
    b"a UID EXPUNGE 1:3",
    b"a DELETE Archive",
    b"a MOVE 1 Trash",
    b"a UID MOVE 1 \"Deleted Items\"",
    b"a MOVE 1 INBOX.Trash",
    b"a MOVE 1 {5+}\r\nTrash",  # the name as a literal
])
def test_deleting_commands_are_refused(line):
    assert refused(line)


@pytest.mark.parametrize("line", [
    b"a STORE 1 -FLAGS (\\Deleted)",
    b"a STORE 1 +FLAGS (\\Seen)",
    b"a STORE 1 FLAGS (\\Seen)",
    b"a MOVE 1 Archive",
    b"a COPY 1 Trash",
    b"a CLOSE",
    b"a FETCH 1 (FLAGS)",
    b"a SELECT Trash",
    # Encoded printable ASCII is no name in modified UTF-7: Dovecot keeps "&AFQ-rash" as
    # it is, a mailbox other than Trash, and so does the proxy.
    b"a MOVE 1 &AFQ-rash",
])
def test_other_commands_pass(line):
    assert not refused(line)


def test_a_trash_the_upstream_listed_under_another_name():
    who = session()
    assert not refused(b"a MOVE 1 Papierkorb", who)
    who.special_use["Papierkorb"] = "\\Trash"
    assert refused(b"a MOVE 1 Papierkorb", who)
    who.special_use["Entwürfe"] = "\\Trash"  # names are compared decoded
    assert refused(b"a MOVE 1 Entw&APw-rfe", who)


def test_only_protected_accounts():
    assert refused(b"a EXPUNGE", session("Archive@Example.TEST"))
    assert refused(b"a EXPUNGE", session("anyone@legal.example.test"))
    assert not refused(b"a EXPUNGE", session("bob@example.test"))
    assert not refused(b"a EXPUNGE", session(None))
    assert refused(b"a EXPUNGE", session("bob@example.test"), accounts=["*"])


def test_pop3_dele():
    retention = plugin()
    assert retention.pop3_command(session(), "DELE") is not None
    assert retention.pop3_command(session(), "RETR") is None
    assert retention.pop3_command(session("bob@example.test"), "DELE") is None


def test_accounts_must_be_addresses():
    with pytest.raises(ValueError, match="is not an address"):
        Plugin.Config(accounts=["archive"])


def test_a_login_is_read_as_the_mail_store_reads_it():
    # Dovecot logs "alice*admin" in as alice (a master user), and "archive" as
    # archive@example.test when its auth_default_realm is example.test.
    assert refused(b"a EXPUNGE", session("archive@example.test*admin"))
    assert refused(b"a EXPUNGE", session("archive"), default_domain="example.test")
    assert not refused(b"a EXPUNGE", session("bob"), default_domain="example.test")
    # Without a default domain a bare login may land in any domain: refused when an
    # entry could be it, rather than guessed.
    assert refused(b"a EXPUNGE", session("archive"))
    assert refused(b"a EXPUNGE", session("bob"))  # "@legal.example.test" could be bob's
    assert not refused(b"a EXPUNGE", session("bob"), accounts=[PROTECTED])
    assert refused(b"a EXPUNGE", session("archive@example.test+admin"), master_user_separator="+")
