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
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.servers import free_port, wait_for_port

DOVECOT = "/usr/sbin/dovecot"
HOSTNAME = "dovecot.test"  # in the greetings, and in the Received header submission adds
USER_UID = 65534  # userdb uid/gid of every user (nobody/nogroup)


class Dovecot:
    """`dovecot -F -c CONF` with all its files in a fresh temp dir under /tmp.

    Use as a context manager. Ports: `imap_port`, `pop3_port` and `submission_port`
    (all offering STARTTLS when `tls` = (cert, key) is given) and `submissions_port`
    (implicit TLS); submission needs `submission_relay` ("127.0.0.1:PORT") and is None
    without it, submissions needs `tls` as well. `disable_plaintext_auth` is the 2.3 name
    of what Dovecot 2.4 calls `auth_allow_cleartext` (inverted).
    """

    def __init__(self, users: dict[str, str], listen: str = "127.0.0.1",
                 submission_relay: str | None = None,
                 tls: tuple[str | Path, str | Path] | None = None,
                 trusted_networks: str = "127.0.0.1/32",
                 disable_plaintext_auth: bool = True):
        self.users = dict(users)
        self.listen = listen
        self.submission_relay = submission_relay
        self.tls = tls
        self.trusted_networks = trusted_networks
        self.disable_plaintext_auth = disable_plaintext_auth
        self.imap_port = self.pop3_port = 0
        self.submission_port: int | None = None
        self.submissions_port: int | None = None
        self.dir: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.imap_port, self.pop3_port, self.submission_port,
                            self.submissions_port) if p]

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
        conf = self.dir / "dovecot.conf"
        conf.write_text(self._config())
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
            for port in self.ports:
                wait_for_port(host, port, process=self.process)
                if port != self.submissions_port:  # there the greeting follows TLS
                    # The login processes come up on demand: waiting for each greeting
                    # also waits for them and for the auth service they depend on.
                    with socket.create_connection((host, port), timeout=10) as probe:
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
# A failed login is answered only after auth_failure_delay, and anvil's auth penalty
# then delays every later login from that IP, across sessions, by up to 15 s (measured
# 1.5 s, then 6 s and 4 s): turn both off so tests stay fast and independent. A failure
# still takes up to 0.5 s.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
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
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{submission}"""

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
