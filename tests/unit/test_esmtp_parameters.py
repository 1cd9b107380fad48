"""mailproxy.protocol.esmtp: which MAIL/RCPT parameters a client may use and which reach
the upstream, as tables; no sockets."""

from __future__ import annotations

import pytest

from mailproxy.protocol.esmtp import (
    UnsupportedParameter,
    check_client_parameters,
    format_path_command,
    forwarded_parameters,
)

OFFERED = {"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "AUTH", "PIPELINING"}


@pytest.mark.parametrize(
    ("verb", "params"),
    [
        ("MAIL", {}),
        ("MAIL", {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": True}),
        ("MAIL", {"BODY": "7bit"}),  # the value is case-insensitive
        ("MAIL", {"RET": "HDRS", "ENVID": "abc", "AUTH": "<>"}),
        ("RCPT", {"NOTIFY": "NEVER", "ORCPT": "rfc822;a@example.test"}),
    ],
)
def test_offered_parameters_are_accepted(verb, params):
    assert check_client_parameters(verb, params, OFFERED) is None


@pytest.mark.parametrize(
    ("verb", "params", "offered", "message"),
    [
        ("MAIL", {"SIZE": "1"}, OFFERED - {"SIZE"}, "Unsupported option: SIZE"),
        ("MAIL", {"BODY": "8BITMIME"}, OFFERED - {"8BITMIME"}, "Unsupported option: BODY"),
        ("MAIL", {"SMTPUTF8": True}, OFFERED - {"SMTPUTF8"}, "Unsupported option: SMTPUTF8"),
        ("MAIL", {"RET": "FULL"}, OFFERED - {"DSN"}, "Unsupported option: RET"),
        ("MAIL", {"XYZZY": "1"}, OFFERED, "Unsupported option: XYZZY"),
        # RCPT's parameters are not MAIL's and the other way round.
        ("RCPT", {"SIZE": "1"}, OFFERED, "Unsupported option: SIZE"),
        ("MAIL", {"NOTIFY": "NEVER"}, OFFERED, "Unsupported option: NOTIFY"),
        # BINARYMIME needs CHUNKING, which is not offered; a bare BODY has no value.
        ("MAIL", {"BODY": "BINARYMIME"}, OFFERED, "Unsupported option: BODY=BINARYMIME"),
        ("MAIL", {"BODY": True}, OFFERED, "Unsupported option: BODY=True"),
    ],
)
def test_a_parameter_the_client_was_not_offered_is_refused(verb, params, offered, message):
    with pytest.raises(UnsupportedParameter) as caught:
        check_client_parameters(verb, params, offered)
    assert str(caught.value) == message


def test_the_first_unoffered_parameter_is_named_even_after_accepted_ones():
    with pytest.raises(UnsupportedParameter, match="RET"):
        check_client_parameters("MAIL", {"SIZE": "1", "RET": "FULL"}, {"SIZE"})


@pytest.mark.parametrize(
    ("verb", "params", "upstream", "forwarded"),
    [
        # Only what the upstream advertised, in the client's order.
        ("MAIL", {"SMTPUTF8": True, "SIZE": "10", "BODY": "8BITMIME"},
         {"SIZE": "0", "8BITMIME": "", "SMTPUTF8": ""},
         {"SMTPUTF8": True, "SIZE": "10", "BODY": "8BITMIME"}),
        ("MAIL", {"SIZE": "10", "BODY": "8BITMIME"}, {"8BITMIME": ""}, {"BODY": "8BITMIME"}),
        ("MAIL", {"RET": "HDRS", "ENVID": "x"}, {"SIZE": ""}, {}),
        # AUTH= never goes on, even to an upstream that offers AUTH.
        ("MAIL", {"AUTH": "<>", "SIZE": "1"}, {"AUTH": "PLAIN", "SIZE": ""}, {"SIZE": "1"}),
        ("RCPT", {"NOTIFY": "NEVER", "ORCPT": "rfc822;a@b"}, {"DSN": ""},
         {"NOTIFY": "NEVER", "ORCPT": "rfc822;a@b"}),
        ("RCPT", {"NOTIFY": "NEVER"}, {"SIZE": ""}, {}),
        # A parameter name unknown to the table is never forwarded.
        ("MAIL", {"XYZZY": "1"}, {"XYZZY": ""}, {}),
    ],
)
def test_forwarded_parameters(verb, params, upstream, forwarded):
    result = forwarded_parameters(verb, params, upstream)
    assert result == forwarded
    assert list(result) == list(forwarded)


@pytest.mark.parametrize(
    ("verb", "address", "params", "wire"),
    [
        ("MAIL", "a@example.test", {}, b"MAIL FROM:<a@example.test>"),
        ("MAIL", "", {"SIZE": "12", "SMTPUTF8": True}, b"MAIL FROM:<> SIZE=12 SMTPUTF8"),
        ("RCPT", "b@example.test", {"NOTIFY": "NEVER"}, b"RCPT TO:<b@example.test> NOTIFY=NEVER"),
        ("RCPT", "j\u00fcrgen@example.test", {}, "RCPT TO:<j\u00fcrgen@example.test>".encode()),
    ],
)
def test_format_path_command(verb, address, params, wire):
    assert format_path_command(verb, address, params) == wire
