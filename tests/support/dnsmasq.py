"""A real DNS server for tests: dnsmasq on loopback, answering only from its records.

`--local` makes it authoritative for the test zones, so a name it does not hold is
NXDOMAIN (an answer) rather than SERVFAIL (no upstream to ask).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import free_port, wait_for_listen

DNSMASQ = "/usr/sbin/dnsmasq"


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
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        wait_for_listen(self.port, timeout=10, process=self.process)  # its TCP side
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
