"""A real DNS server for tests: dnsmasq on loopback, answering only from its records.

`--local` makes it authoritative for the test zones, so a name it does not hold is
NXDOMAIN (an answer) rather than SERVFAIL (no upstream to ask). `authoritative()` makes
it a real authoritative server instead, whose NXDOMAIN carries the zone's SOA.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from dns.resolver import NXDOMAIN, Resolver

from tests.support.servers import free_port, wait_for_listen

DNSMASQ = "/usr/sbin/dnsmasq"


def authoritative(zone: str = "test", ttl: int = 300) -> list[str]:
    """Options that make dnsmasq the authoritative server of `zone`, as the servers of
    DNS lists are: its records get `ttl`, and a name it does not hold is NXDOMAIN with
    the zone's SOA, whose minimum (`ttl` too) says how long that may be cached (RFC
    2308). Pass them with `zones=()`; any name outside `zone` is REFUSED.

    Records: `--host-record=NAME,IP` (A or AAAA), `--txt-record=NAME,TEXT` (a comma
    starts another string of the record), `--mx-host=NAME,HOST,PREFERENCE`."""
    return [
        f"--auth-server=ns.{zone},127.0.0.1", f"--auth-zone={zone}", f"--auth-ttl={ttl}",
        f"--auth-soa=1,hostmaster.{zone},1200,180,1209600",
    ]


class Dnsmasq:
    def __init__(self, options: list[str], zones: tuple[str, ...] = ("test", "in-addr.arpa")) -> None:
        self.options = options
        self.zones = zones
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._directory = Path(tempfile.mkdtemp(prefix="dnsmasq-"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Dnsmasq:
        self.port = free_port()
        command = [
            DNSMASQ, "--no-daemon", "--conf-file=/dev/null", f"--port={self.port}",
            "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
            f"--pid-file={self._directory / 'pid'}", f"--log-facility={self._directory / 'log'}",
            *(f"--local=/{zone}/" for zone in self.zones), *self.options,
        ]
        # Its stderr to a file, not a pipe: with --no-daemon it echoes what it logs, and a
        # pipe nobody reads stops it after some hundreds of logged queries.
        with open(self._directory / "stderr", "wb") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr)
        try:
            wait_for_listen(self.port, timeout=10, process=self.process)  # its TCP side
        except BaseException:
            self.__exit__()
            raise
        return self

    def log(self) -> str:
        """What dnsmasq logged; with the option `--log-queries`, every query it got."""
        path = self._directory / "log"
        return path.read_text() if path.exists() else ""

    def queries(self, name: str, rdtype: str = "TXT") -> int:
        """How many queries for `name` and `rdtype` this server (with `--log-queries`)
        answered, up to a marker query asked last: dnsmasq logs in the order it answers,
        so the marker's line comes after theirs."""
        marker = f"marker{time.monotonic_ns()}.test"
        resolver = Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], self.port
        try:
            resolver.resolve(marker, "TXT", lifetime=5)
        except NXDOMAIN:
            pass
        deadline = time.monotonic() + 10
        while f"auth[TXT] {marker} " not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq logged no query for {marker}")
            time.sleep(0.01)
        # "auth[TXT]" for a name in its zone, "query[TXT]" for any other
        return len(re.findall(rf"\b(?:auth|query)\[{rdtype}\] {re.escape(name)} from ", self.log()))

    def stop(self) -> None:
        """Stop answering (a test of what is cached then); stopping twice is harmless."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._directory, ignore_errors=True)
