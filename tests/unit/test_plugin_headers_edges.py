"""The headers plugin at its edges: the order of its verdicts when a message matches
both scoring and refusing rules, how each message is counted, the hook's documented
timeout, the loaded rules staying as they were validated, a tar found by its first
bytes alone, and where the listing of a tar stops and what it costs the message's
other tars."""

from __future__ import annotations

import io
import re
import tarfile

import pytest
from pydantic import ValidationError

import mailproxy_plugins.headers as headers
from mailproxy import Action
from tests.unit.test_plugin_headers import (
    ABUSIVE, GTUBE, LIMITED, REJECTED, UNPARSABLE, attachment, checks, load, mime, scan, tar_of, text,
)

EXE = {"symbol": "BAD_ATTACHMENT", "filename": ["*.exe"], "action": "reject"}
PILLS = {"symbol": "SUBJECT_PILLS", "header": "Subject", "pattern": "(?i)viagra", "action": 3.0}
PARSE_RESULTS = ("clean", "defects", "failed", "skipped")


# --- several findings --------------------------------------------------------------------


@pytest.mark.parametrize("options, refused_by", [
    ({"rules": [EXE, PILLS], "gtube": "off"}, "BAD_ATTACHMENT"),  # a refusing rule listed before a scoring one
    ({"rules": [PILLS]}, "GTUBE"),  # the built-in GTUBE, tried before every rule
])
def test_the_points_of_every_match_come_before_a_refusal_whatever_the_order(options, refused_by):
    # The engine stops at the first refusal: points after it would be neither logged
    # nor traced, and the administrator would not see what else the message matched.
    message = mime(text(GTUBE + b"\r\n"), attachment("setup.exe"), head=b"Subject: viagra\r\n")
    assert scan(load(**options), message) == (
        (Action.REJECT, 550, "5.7.1", f"Message content rejected ({refused_by})"), {"SUBJECT_PILLS": 3.0})


# --- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("message, result", [
    (mime(text()), "clean"),
    (b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nopen', "defects"),
    (UNPARSABLE, "failed"),
    (b"Subject: test\r\nContent-Type: " + ABUSIVE + b"\r\n\r\nHello.\r\n", "skipped"),
])
def test_each_message_is_counted_under_what_the_parser_made_of_it(message, result):
    # Only under its own result: a dashboard of malformed mail must not count clean mail.
    before = {name: checks("parse", name) for name in PARSE_RESULTS}
    scan(load(), message)
    after = {name: checks("parse", name) - before[name] for name in PARSE_RESULTS}
    assert after == {name: int(name == result) for name in PARSE_RESULTS}


# --- settings ----------------------------------------------------------------------------


def test_the_hook_timeout_is_the_15_seconds_the_docstring_states_by_default():
    # Not the 5 s of other plugins: a big message takes about a second to parse on a
    # busy machine, and waits its turn for a thread within the same timeout.
    stated = re.search(r"The hook's\s+`timeout` \((\d+) s\)", headers.__doc__)
    assert headers.Plugin.Config().timeout == float(stated[1]) == 15.0


@pytest.mark.parametrize("change", [
    lambda settings: setattr(settings, "gtube", "off"),
    lambda settings: setattr(settings.rules[0], "action", "off"),
])
def test_loaded_settings_and_rules_cannot_be_changed_afterwards(change):
    # The plugin compiles its checks when it is loaded: a rule changed afterwards would
    # be shown one way and enforced the old way.
    settings = headers.Plugin.Config(rules=[EXE])
    with pytest.raises(ValidationError, match="frozen"):
        change(settings)
    assert settings.gtube == "reject" and settings.rules[0].action == "reject"


# --- archives ----------------------------------------------------------------------------


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("name", ["holiday.jpg", None])
def test_an_uncompressed_tar_is_found_by_its_first_bytes_whatever_its_name(tar_format, name):
    # A sender can call a tar anything, or nothing: the "ustar" magic at byte 257 of
    # its first header still opens it.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        info = tarfile.TarInfo("setup.exe")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"MZ"))
    assert scan(load(rules=[EXE]), mime(text(), attachment(name, buffer.getvalue()))) == (REJECTED, {})


@pytest.mark.parametrize("spare", [0, 1, 512])
def test_a_tar_that_fits_max_archive_bytes_is_read_to_its_end_without_a_limit(spare):
    # Cut after its last member, without the end-of-archive blocks (tarfile and GNU tar
    # read it so): the listing reads on to the end of the data, within the budget, and
    # a tar that fills the budget exactly reached no limit (nothing of it went unread).
    whole = tar_of({"setup.exe": b"MZ"}, "w")
    cut = whole[:1024]  # one header, one block of data
    options = {"rules": [EXE], "max_archive_bytes": len(cut) + spare}
    assert scan(load(**options), mime(text(), attachment("files.tar", cut))) == (REJECTED, {})


def test_the_members_within_max_archive_bytes_are_listed_when_the_budget_ends_inside_a_read():
    # tarfile reads 10 KiB at a time; a budget that ends inside such a read still lets
    # it see the headers before that end, so the .exe 1 KiB in counts, with the limit.
    packed = tar_of({"a.txt": b"a", "setup.exe": b"MZ"})  # 10 KiB unpacked: headers at 0 and 1024
    plugin = load(rules=[EXE], max_archive_bytes=2049)
    assert scan(plugin, mime(text(), attachment("files.tgz", packed))) == (REJECTED, LIMITED[1])


def test_a_tar_cut_short_where_the_budget_ends_is_corrupt_not_over_the_limit():
    # The stream ends with the budget: nothing went unread, so no limit was reached,
    # and the data that never came makes the archive corrupt, not clean.
    cut = tar_of({"setup.exe": b"MZ", "big.bin": bytes(20_000)}, "w")[:10_241]
    plugin = load(rules=[EXE], max_archive_bytes=len(cut))
    assert scan(plugin, mime(text(), attachment("files.tar", cut))) == (None, {"ARCHIVE_CORRUPT": 1.0})


def test_a_tar_listed_up_to_max_archive_members_is_unpacked_no_further():
    # The listing stops at the first member past the limit, before that member's
    # megabyte of zeros: the message's next tar still has the budget to be read.
    cut_short = tar_of({"a.txt": b"a", "b.txt": b"b", "zeros.bin": bytes(1_000_000), "d.txt": b"d"})
    message = mime(text(), attachment("a.tgz", cut_short), attachment("b.tgz", tar_of({"setup.exe": b"MZ"})))
    plugin = load(rules=[EXE], max_archive_members=2, max_archive_bytes=500_000)
    assert scan(plugin, message) == (REJECTED, LIMITED[1])
