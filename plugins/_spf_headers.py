"""The header lines that record an SPF result: Received-SPF (RFC 7208 9.1) and
Authentication-Results (RFC 8601).

The sender and the HELO name come from the client: they are quoted where they are not
plain atoms, so that no client can make the header say more than the check found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*")
_LONGEST_VALUE = 255  # a domain's limit; longer values are cut, so the line stays short


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: str  # pass, fail, softfail, neutral, none, temperror, permerror
    identity: str  # "mailfrom", or "helo" for the null sender
    ip: str
    sender: str  # the MAIL FROM address, "" for the null sender
    helo: str
    explanation: str  # what pyspf (or the domain's exp=) said, printable

    @property
    def domain(self) -> str:
        """The domain whose policy was checked."""
        return self.sender.rpartition("@")[2] if self.identity == "mailfrom" else self.helo


def _value(text: str) -> str:
    """A header value: as is when it is a dot-atom or a plain address, else quoted."""
    text = text[:_LONGEST_VALUE]
    if _DOT_ATOM.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _in_comment(text: str) -> str:
    return re.sub(r"([()\\])", r"\\\1", text[:_LONGEST_VALUE])


_COMMENTS = {
    "pass": "domain of {d} designates {ip} as permitted sender",
    "fail": "domain of {d} does not designate {ip} as permitted sender",
    "softfail": "domain of transitioning {d} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {d}",
    "none": "domain of {d} does not designate permitted sender hosts",
    "temperror": "error in processing during lookup of {d}",
    "permerror": "permanent error in processing domain of {d}",
}


def comment(outcome: SpfOutcome) -> str:
    """What the result means, in words (RFC 7208's examples)."""
    return _COMMENTS[outcome.result].format(d=outcome.domain, ip=outcome.ip)


def received_spf(outcome: SpfOutcome, receiver: str) -> str:
    """The value of the Received-SPF header line."""
    pairs = [f"client-ip={_value(outcome.ip)}"]
    if outcome.identity == "mailfrom":
        pairs.append(f"envelope-from={_value(outcome.sender)}")
    pairs += [f"helo={_value(outcome.helo)}", f"receiver={receiver}", f"identity={outcome.identity}"]
    return f"{outcome.result} ({receiver}: {_in_comment(comment(outcome))}) " + "; ".join(pairs)


def authentication_results(outcome: SpfOutcome, authserv_id: str) -> str:
    """The value of the Authentication-Results header line."""
    identity = outcome.sender if outcome.identity == "mailfrom" else outcome.helo
    return f"{authserv_id}; spf={outcome.result} smtp.{outcome.identity}={_value(identity)}"
