"""A private Dovecot (IMAP, POP3, SMTP submission) on loopback, for tests.

What Dovecot 2.3.19 (Debian 12) submission does, measured with this harness (listening
on 127.0.0.2, `trusted_networks` 127.0.0.1/32, `tls` given, relaying to smtp-sink):

1. XCLIENT is advertised only to a client from `login_trusted_networks`, before and
   after STARTTLS: "250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD".
   From elsewhere it is not advertised and "XCLIENT ..." gets
   "550 5.7.14 You are not from trusted IP".
2. "XCLIENT ADDR=192.0.2.7 LOGIN=alice@example.test" gets a new greeting, as from
   Postfix: "220 dovecot.test Dovecot (Debian) ready." Unknown attributes (NAME=) are
   ignored, ADDR=[UNAVAILABLE] and ADDR=IPV6:2001:db8::1 are accepted, a malformed
   ADDR gets "501 5.5.4 Invalid ADDR parameter".
3. Dovecot then uses ADDR as the client's address: its log says rip=192.0.2.7, and the
   message relayed to smtp-sink starts with a Received header (continuation lines
   start with a tab):
       Received: from real-client.test ([192.0.2.7])
               by dovecot.test with ESMTPA
               id ...
               (envelope-from <alice@example.test>)
               for <bob@example.test>; <date>
   where the name is the EHLO sent after XCLIENT (XCLIENT's HELO= shows only when no
   EHLO follows), and ESMTPA says "authenticated, no TLS" (ESMTPSA after STARTTLS).
   XCLIENT's LOGIN shows nowhere. The relay sees MAIL FROM:<alice@example.test>
   AUTH=alice@example.test, the user of the AUTH command, from 127.0.0.1.
4. AUTH mechanisms (`auth_mechanisms = plain login` here; Dovecot's default is plain):
   "250-AUTH PLAIN LOGIN" before and after STARTTLS to a client that counts as secured
   (from the trusted networks, or from Dovecot's own address). To another client before
   TLS an empty "250-AUTH " (smtplib: "No suitable authentication method found"), and
   AUTH PLAIN gets "523 5.7.10 Plaintext authentication disabled." A bad password (PLAIN
   or LOGIN): "535 5.7.8 Authentication failed."; a good one: "235 2.7.0 Logged in."
5. MAIL without AUTH: "530 5.7.0 Authentication required." (also RCPT and DATA).
6. No: after XCLIENT LOGIN=alice@example.test, MAIL still gets "530 5.7.0
   Authentication required."; XCLIENT LOGIN does not authenticate. The session must
   AUTH itself (with the user's password), which then works without TLS because a
   trusted client counts as secured.

Also seen: the trusted networks count as secured for IMAP and POP3 as well, so listening
on 127.0.0.2 keeps plaintext logins from 127.0.0.1 out only when 127.0.0.1 is not in
`trusted_networks` (pass "" or connect from 127.0.0.3). Submission connects to the relay
at every login, before any MAIL, and logs "Warning: smtp-client: ... Received invalid
EHLO response line: Parameter is empty" about smtp-sink's EHLO reply; relaying works.

What POP3 and IMAP do, measured with this harness (listening on 127.0.0.2,
`trusted_networks` 127.0.0.5/32, `haproxy` on; clients from 127.0.0.5 and 127.0.0.1):

7. POP3 XCLIENT from the trusted networks: the greeting is "+OK [XCLIENT] Dovecot
   (Debian) ready.", "XCLIENT ADDR=192.0.2.9 PORT=4711 SESSION=mp-7" gets "+OK Updated",
   and the Login line says rip=192.0.2.9 and session=<mp-7>. From elsewhere the greeting
   has no [XCLIENT] and XCLIENT gets "+OK You are not from trusted IP - ignoring": an
   +OK, so only the greeting tells. CAPA never lists XCLIENT. IMAP's ID with
   "x-originating-ip" from the trusted networks sets rip the same way.
8. The haproxy listeners take rip from a PROXY v2 header sent from
   `haproxy_trusted_networks` (`login_trusted_networks` plays no part there). Without a
   PP2_TYPE_SSL TLV with the client-SSL bit the session is not secured: the IMAP greeting
   has LOGINDISABLED and LOGIN gets "NO [PRIVACYREQUIRED] ..."; with it LOGIN works and
   the Login line says "secured". From another address the connection is closed at once,
   without a word, and the log says "Warning: haproxy: Client not trusted (rip=...)".
9. Dovecot 2.3 has no UTF8=ACCEPT: "ENABLE UTF8=ACCEPT" gets a tagged OK and no
   "* ENABLED", and a UTF-8 mailbox name gets "NO Mailbox name is not valid mUTF-7".
   Mailbox names in the config are UTF-8; LIST shows them in modified UTF-7
   (Entwürfe: Entw&APw-rfe).
10. IDLE answers "+ idling"; a message another session APPENDs shows as "* 1 EXISTS"
   and "* 1 RECENT" about 0.5 s later.
11. A message with CRLF line ends comes back from POP3 RETR byte for byte (dot-stuffed
   on the wire). One with a bare LF, or with no line end at the end, comes back with
   CRLF everywhere and a CRLF at the end, and "+OK N octets" and STAT count those.
12. Every log line about a connection names its rip, including connections closed before
   any login: match the Login line ("Login: user=<alice...>, method=PLAIN, rip=...").
   The harness's own connections (start-up probes, `seed`) come from `listen`.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.mailstore_clients import ImapRaw, mutf7
from tests.support.servers import free_port

DOVECOT = "/usr/sbin/dovecot"
HOSTNAME = "dovecot.test"  # in the greetings, and in the Received header submission adds
USER_UID = 65534  # userdb uid/gid of every user (nobody/nogroup)


class Dovecot:
    # A failed login is answered only after auth_failure_delay, and anvil's auth penalty
    # then delays every later login from that IP, across sessions, by up to 15 s
    # (measured 1.5 s, then 6 s and 4 s): both are off unless `stock_auth_delays`, so
    # tests stay fast and independent. A failure still takes up to 0.5 s.
    _NO_AUTH_DELAYS = """auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""
    r"""`dovecot -F -c CONF` with all its files in a fresh temp dir under /tmp.

    Use as a context manager. Ports: `imap_port`, `pop3_port` and `submission_port`
    (all offering STARTTLS when `tls` = (cert, key) is given) and `submissions_port`
    (implicit TLS); submission needs `submission_relay` ("127.0.0.1:PORT") and is None
    without it, submissions needs `tls` as well. `disable_plaintext_auth` is the 2.3 name
    of what Dovecot 2.4 calls `auth_allow_cleartext` (inverted).

    `trusted_networks` is `login_trusted_networks`: the addresses whose POP3 XCLIENT and
    IMAP ID Dovecot believes, and whose plaintext logins it allows. `haproxy` adds the
    listeners `imap_haproxy_port` and `pop3_haproxy_port`, which want a PROXY header first
    from `haproxy_trusted_networks` (default: `trusted_networks`). `listen` may be any
    loopback address: instances on 127.0.0.2 and 127.0.0.3 run side by side.

    Mailboxes: `special_use` adds "Trash" with the flag \Trash; `mailboxes` names more, as
    a tuple of names or a mapping name -> special-use flag (e.g. {"Papierkorb": r"\Trash"});
    each is created at the user's first login. `imap_compress` offers COMPRESS=DEFLATE.
    """

    def __init__(self, users: dict[str, str], listen: str = "127.0.0.1",
                 submission_relay: str | None = None,
                 tls: tuple[str | Path, str | Path] | None = None,
                 trusted_networks: str = "127.0.0.1/32",
                 disable_plaintext_auth: bool = True,
                 haproxy: bool = False,
                 haproxy_trusted_networks: str | None = None,
                 special_use: bool = False,
                 mailboxes: Mapping[str, str] | Sequence[str] = (),
                 imap_compress: bool = False,
                 stock_auth_delays: bool = False,
                 haproxy_ssl: bool = False,
                 extra_config: str = ""):
        self.users = dict(users)
        self.stock_auth_delays = stock_auth_delays
        self.haproxy_ssl = haproxy_ssl  # TLS after the PROXY header on the haproxy listeners
        # Settings appended last: Dovecot merges a repeated block and keeps a setting's
        # last value, so these override the harness's own.
        self.extra_config = extra_config
        self.listen = listen
        self.submission_relay = submission_relay
        self.tls = tls
        self.trusted_networks = trusted_networks
        self.disable_plaintext_auth = disable_plaintext_auth
        self.haproxy = haproxy
        self.haproxy_trusted_networks = (trusted_networks if haproxy_trusted_networks is None
                                         else haproxy_trusted_networks)
        self.mailboxes = _mailboxes(special_use, mailboxes)
        self.imap_compress = imap_compress
        self.imap_port = self.pop3_port = 0
        self.submission_port: int | None = None
        self.submissions_port: int | None = None
        self.imap_haproxy_port: int | None = None
        self.pop3_haproxy_port: int | None = None
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.imap_port, self.pop3_port, self.submission_port,
                            self.submissions_port, self.imap_haproxy_port,
                            self.pop3_haproxy_port) if p]

    def start(self) -> Dovecot:
        # Unprivileged Dovecot processes (auth as `dovecot`, imap/pop3/submission as uid
        # 65534) reach sockets, homes and the passwd-file below this dir: make it
        # searchable, unlike mkdtemp's 0700 (and pytest's tmp_path).
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
        self.dir.chmod(0o755)
        passwd = self.dir / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        passwd.chmod(0o644)
        for user in self.users:
            home = self.dir / "home" / user
            home.mkdir(parents=True)
            os.chown(home, USER_UID, USER_UID)
        for attempt in range(3):
            try:
                self._launch()
                return self
            except RuntimeError as error:
                # Another process may take a free port before Dovecot binds it.
                if attempt == 2 or "Address already in use" not in str(error):
                    self.stop()
                    raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        host = self.listen
        self.imap_port, self.pop3_port = free_port(host), free_port(host)
        self.submission_port = free_port(host) if self.submission_relay else None
        self.submissions_port = free_port(host) if self.submission_relay and self.tls else None
        self.imap_haproxy_port = free_port(host) if self.haproxy else None
        self.pop3_haproxy_port = free_port(host) if self.haproxy else None
        conf = self.dir / "dovecot.conf"
        conf.write_text(self._config(), encoding="utf-8")  # mailbox names are UTF-8
        # Fatal errors before Dovecot opens log_path go to stderr: append them to the
        # same file, so log() has everything (including an attempt that lost its port).
        with open(self.dir / "dovecot.log", "ab") as output:
            # Own session: stop() signals the whole process group.
            self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                            stdin=subprocess.DEVNULL, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        # The master binds every listener before it logs "starting up" (an attempt that
        # lost a port never logs it): after that line the ports are Dovecot's, so a
        # connect below cannot reach another process that took one of them.
        deadline = time.monotonic() + 15
        while "starting up for" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"dovecot did not start within 15 s:\n{self.log()}")
            time.sleep(0.02)
        try:
            # The login processes come up on demand: waiting for a greeting also waits
            # for them and for the auth service they depend on. No greeting comes at
            # once on submissions (TLS first) and the haproxy listeners (a PROXY header
            # first); they belong to the same login services. The probes come from
            # Dovecot's own address, so that the rip= of their log lines is not the test
            # clients' 127.0.0.1.
            for port in filter(None, (self.imap_port, self.pop3_port, self.submission_port)):
                with socket.create_connection((host, port), timeout=10,
                                              source_address=(host, 0)) as probe:
                    if not probe.recv(1):
                        raise RuntimeError(f"no greeting on {host}:{port}")
        except (OSError, RuntimeError) as error:
            self._kill()
            raise RuntimeError(f"{error}\n{self.log()}") from None

    def _config(self) -> str:
        d = self.dir
        protocols = "imap pop3" + (" submission" if self.submission_relay else "")
        if self.tls:
            cert, key = self.tls
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
        else:
            ssl = "ssl = no\n"  # Dovecot's default `yes` would want a certificate
        # Listeners we do not want get port 0 (off), overriding the built-in 993 and 995.
        submission = ""
        if self.submission_relay:
            relay_host, _, relay_port = self.submission_relay.rpartition(":")
            submission = f"""
submission_relay_host = {relay_host}
submission_relay_port = {relay_port}
service submission-login {{
  inet_listener submission {{
    port = {self.submission_port}
  }}
  inet_listener submissions {{
    port = {self.submissions_port or 0}
    ssl = yes
  }}
}}
"""
        # One setting per line: Dovecot's config parser reads nothing else.
        return f"""\
protocols = {protocols}
listen = {self.listen}
hostname = {HOSTNAME}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
auth_verbose = yes
{ssl}disable_plaintext_auth = {"yes" if self.disable_plaintext_auth else "no"}
login_trusted_networks = {self.trusted_networks}
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:~/Maildir
# A proxy makes every session come from one IP; the default limit is 10 per user and IP.
mail_max_userip_connections = 1000
{"" if self.stock_auth_delays else self._NO_AUTH_DELAYS}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={USER_UID} gid={USER_UID} home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{_haproxy_listener("imap_haproxy", self.imap_haproxy_port, self.haproxy_ssl)}}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
{_haproxy_listener("pop3_haproxy", self.pop3_haproxy_port, self.haproxy_ssl)}}}
{submission}{self._haproxy_config()}{self._namespace_config()}{self._compress_config()}{self.extra_config}"""

    def _haproxy_config(self) -> str:
        if not self.haproxy:
            return ""
        return f"haproxy_trusted_networks = {self.haproxy_trusted_networks}\n"

    def _namespace_config(self) -> str:
        if not self.mailboxes:
            return ""  # Dovecot's implicit namespace: INBOX only
        blocks = []
        for name, flag in self.mailboxes.items():
            special_use = f"    special_use = {flag}\n" if flag else ""
            blocks.append(f'  mailbox "{name}" {{\n{special_use}    auto = create\n  }}\n')
        return f"namespace inbox {{\n  inbox = yes\n{''.join(blocks)}}}\n"

    def _compress_config(self) -> str:
        if not self.imap_compress:
            return ""
        # COMPRESS=DEFLATE (RFC 4978); the Debian package ships lib30_imap_zlib_plugin.so.
        return "protocol imap {\n  mail_plugins = $mail_plugins zlib imap_zlib\n}\n"

    def seed(self, user: str, messages: list[bytes], mailbox: str = "INBOX") -> None:
        """APPEND `messages` to `user`'s `mailbox` (which must exist), in order.

        The connection comes from Dovecot's own address, which Dovecot counts as secured:
        the plaintext login works whatever `trusted_networks`, `tls` and
        `disable_plaintext_auth` say, and the log shows it as rip=<listen>, apart from
        the test clients' logins from 127.0.0.1. Messages with CRLF line ends, the last
        line included, come back from POP3 RETR and IMAP FETCH byte for byte.
        """
        token = base64.b64encode(f"\0{user}\0{self.users[user]}".encode()).decode()
        with ImapRaw(self.listen, self.imap_port, source=self.listen) as imap:
            imap.line()  # the greeting
            _expect_ok(imap.command(f"seed-login AUTHENTICATE PLAIN {token}".encode()))
            name = mutf7(mailbox)
            for number, message in enumerate(messages, start=1):
                # Non-synchronising literals (LITERAL+): no waiting for "+" each time.
                tag = b"seed%d" % number
                imap.send(b"%s APPEND {%d+}\r\n%s {%d+}\r\n%s\r\n"
                          % (tag, len(name), name, len(message), message))
                _expect_ok(imap.until_tagged(tag))
            imap.command(b"seed-logout LOGOUT")

    def wait_for_log(self, pattern: str | re.Pattern, timeout: float = 15.0) -> str | re.Match:
        """The first log line containing `pattern` (a str), or the first match of
        `pattern` (a compiled regex) in the whole log, once Dovecot has written it.
        Dovecot logs through its log process, a moment after the event."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if isinstance(pattern, re.Pattern):
                if found := pattern.search(log):
                    return found
            else:
                for line in log.splitlines():
                    if pattern in line:
                        return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in Dovecot's log within {timeout} s:\n{log}")
            time.sleep(0.02)

    def log(self) -> str:
        """Dovecot's log so far (with anything it printed before opening the log)."""
        if self.dir is None:
            return ""  # stopped: the log went with the temp dir
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its session: all of Dovecot
            self.process.wait()

    def stop(self) -> None:
        deadline = time.monotonic() + 5
        while self.process is not None and self.process.poll() is None:
            if time.monotonic() > deadline:
                self._kill()
                break
            # To the whole group, and again while the master lives: a SIGTERM to the
            # master alone takes it a second to stop its children, and a child it forks
            # meanwhile would wait 5 s for services already gone. (The master itself
            # still sleeps a second, now and then, for a child exiting as it stops.)
            os.killpg(self.process.pid, signal.SIGTERM)
            time.sleep(0.01)
        if self.process is not None:
            try:  # whatever the master left behind, so that nothing writes into the dir
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _mailboxes(special_use: bool, mailboxes: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """Mailbox name -> its special-use flag ("" for none), each created at first login."""
    if isinstance(mailboxes, str):
        raise TypeError(f"mailboxes={mailboxes!r}: give a tuple of names, or a mapping")
    named = dict(mailboxes) if isinstance(mailboxes, Mapping) else dict.fromkeys(mailboxes, "")
    if special_use:
        named.setdefault("Trash", r"\Trash")
    for name in named:  # a quoted name in the config: keep its quoting trivial
        if not name or any(c in name for c in '"\\') or not name.isprintable():
            raise ValueError(f"mailbox name {name!r}: empty, or with a quote, backslash or control character")
    # A bad flag is Dovecot's to report: "mailbox Trash: unknown special_use: \\Trash".
    return named


def _haproxy_listener(name: str, port: int | None, ssl: bool) -> str:
    """An inet_listener that wants a PROXY v1/v2 header first (haproxy_trusted_networks),
    and with `ssl` TLS after it."""
    if port is None:
        return ""
    tls = "    ssl = yes\n" if ssl else ""
    return f"  inet_listener {name} {{\n    port = {port}\n    haproxy = yes\n{tls}  }}\n"


def _expect_ok(responses: list[bytes]) -> None:
    if not responses[-1].partition(b" ")[2].startswith(b"OK"):
        raise AssertionError(f"Dovecot refused: {responses!r}")
