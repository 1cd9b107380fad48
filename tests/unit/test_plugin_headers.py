"""The headers plugin's content rules, on messages written out byte for byte: the hook
called with real Session and Envelope objects, and through mailproxy.testing's policy
engine where the reply or the score threshold matters."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import quopri
import tarfile
import threading
import zipfile
from email.message import Message

import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client import REGISTRY

import mailproxy_plugins._mime as _mime
import mailproxy_plugins.headers as headers
from mailproxy import Action, Verdict
from mailproxy.testing import ConfigError, policy_session
from tests.support.plugins import client_session
from tests.support.ticks import counting_ticks

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
RULES = [
    {"symbol": "SUBJECT_PILLS", "header": "Subject", "pattern": r"(?i)\bviagra\b", "action": 3.0},
    {"symbol": "BULK_MAILER", "header": "X-Mailer", "pattern": "Bulk ?Mailer", "action": 2.0},
    {"symbol": "BITCOIN", "body": r"(?i)send \d+ bitcoin", "action": 4.0},
    {"symbol": "CAFE", "body": "caf\u00e9 cr\u00e8me", "action": 0.5},
    {"symbol": "EXECUTABLE_TYPE", "mime_type": ["application/x-msdownload"], "action": "tempfail"},
    {"symbol": "BAD_ATTACHMENT", "filename": ["*.exe", "*.scr"], "action": "reject"},
]
REJECTED = (Action.REJECT, 550, "5.7.1", "Message content rejected (BAD_ATTACHMENT)")
LIMITED = (None, {"MIME_LIMIT": 3.0})  # no refusal; the points of a message that reached a limit


def load(**options):
    """The plugin as the proxy loads it, its section `options` (with RULES unless given)."""
    return policy_session(headers, {"rules": RULES, **options}).plugin


@pytest.fixture(scope="module")
def plugin():
    return load()


def judge(plugin, message: bytes, session=None) -> list[Verdict] | None:
    """The hook's answer for `message`."""
    return asyncio.run(plugin.smtp_data(session=session or client_session(), message=message))


def scan(plugin, message: bytes, session=None) -> tuple:
    """(refusal, points) as the engine reads the hook's verdicts, in order, up to the
    first refusal: the refusal as (action, code, enhanced, text) or None, and the
    points given before it by symbol."""
    answer = judge(plugin, message, session)
    points = {}
    for verdict in answer or []:
        if verdict.action is Action.SCORE:
            points[verdict.symbol] = verdict.points
        else:
            reply = verdict.reply
            return (verdict.action, reply.code, reply.enhanced, reply.text), points
    return None, points


def symbols(plugin, message: bytes) -> dict[str, float]:
    refusal, found = scan(plugin, message)
    assert refusal is None
    return found


def refusal(plugin, message: bytes, session=None):
    return scan(plugin, message, session)[0]


def mime(*parts: bytes, head: bytes = b"Subject: test\r\n") -> bytes:
    """A multipart/mixed message of `parts` (each its header lines, a blank line, its body)."""
    body = b"".join(b"--SEP\r\n" + part for part in parts)
    return head + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="SEP"\r\n\r\n' + body + b"--SEP--\r\n"


def text(body: bytes = b"Hello.\r\n") -> bytes:
    return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def attachment(name: str | None, payload: bytes = b"MZ\x90\x00", content_type: str = "application/octet-stream",
               disposition: str | None = None) -> bytes:
    """A base64 attachment; `disposition` is its whole Content-Disposition value, else
    `attachment; filename="name"`."""
    if disposition is None:
        disposition = "attachment" if name is None else f'attachment; filename="{name}"'
    return (f"Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + b64(payload)


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def checks(check: str, result: str) -> float:
    labels = {"plugin": "headers", "check": check, "result": result}
    return REGISTRY.get_sample_value("mailproxy_plugin_checks_total", labels) or 0.0


# --- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("subject, found", [
    (b"Cheap Viagra here", True),
    (b"cheap VIAGRA", True),
    (b"Niagara falls", False),
    (b"viagrafalls", False),  # \b: a word, not a part of one
    # RFC 2047: base64, quoted-printable, a word split in two, folded, Latin-1
    (b"=?utf-8?b?Q2hlYXAgVmlhZ3Jh?=", True),
    (b"=?UTF-8?Q?Cheap_Viagra?=", True),
    (b"Cheap =?utf-8?q?Via?=\r\n =?utf-8?q?gra?= now", True),  # no space between adjacent words
    (b"=?iso-8859-1?q?Gr=FC=DFe:_viagra?=", True),
    (b"=?utf-8?b?VmlhZ3Jh?= =?unknown-charset?q?_x?=", True),
    # raw UTF-8, as SMTPUTF8 mail has it
    ("Gr\u00fc\u00dfe: viagra".encode(), True),
])
def test_a_header_rule_matches_the_decoded_header(plugin, subject, found):
    message = b"From: a@sender.test\r\nSubject: " + subject + b"\r\n\r\nHello.\r\n"
    assert symbols(plugin, message) == ({"SUBJECT_PILLS": 3.0} if found else {})


def test_a_header_rule_sees_every_occurrence_of_its_header_only(plugin):
    second = b"X-Mailer: Outlook\r\nx-mailer: BulkMailer 2.0\r\nSubject: hi\r\n\r\nHello.\r\n"
    assert symbols(plugin, second) == {"BULK_MAILER": 2.0}
    elsewhere = b"X-Mailer: Outlook\r\nX-Comment: BulkMailer\r\nSubject: hi\r\n\r\nBulkMailer\r\n"
    assert symbols(plugin, elsewhere) == {}


def test_a_header_rule_sees_only_the_messages_own_headers(plugin):
    forwarded = mime(text(), b"Content-Type: message/rfc822\r\n\r\nSubject: viagra\r\n\r\nHello.\r\n")
    assert symbols(plugin, forwarded) == {}


# --- text parts --------------------------------------------------------------------------


@pytest.mark.parametrize("part", [
    b"Content-Type: text/plain\r\n\r\nPlease send 5 bitcoin.\r\n",
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + b64(b"Please send 5 bitcoin to me."),
    # quoted-printable, the phrase cut by a soft line break; HTML matched as it is
    b"Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<p>Please send 5 bit=\r\ncoin</p>\r\n",
])
def test_a_body_rule_matches_the_decoded_text_of_a_text_part(plugin, part):
    assert symbols(plugin, mime(text(), part)) == {"BITCOIN": 4.0}


@pytest.mark.parametrize("charset, body", [
    ("iso-8859-1", "caf\u00e9 cr\u00e8me".encode("latin-1")),
    ("utf-8", "caf\u00e9 cr\u00e8me".encode()),
    ("windows-1252", "caf\u00e9 cr\u00e8me".encode("cp1252")),
])
def test_a_text_part_is_decoded_in_its_charset(plugin, charset, body):
    part = (f"Content-Type: text/plain; charset={charset}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + b64(body)
    assert symbols(plugin, mime(part)) == {"CAFE": 0.5}


def test_a_body_rule_does_not_look_into_other_parts_or_the_headers(plugin):
    message = mime(text(), attachment("notes.bin", b"Please send 5 bitcoin."),
                   head=b"Subject: Please send 5 bitcoin\r\n")
    assert symbols(plugin, message) == {}


# --- attachments -------------------------------------------------------------------------


@pytest.mark.parametrize("part", [
    attachment("invoice.exe"),
    attachment("INVOICE.EXE"),
    attachment("invoice.pdf.exe"),
    attachment("invoice.exe. "),  # Windows ignores trailing dots and spaces
    attachment("C:\\Users\\me\\invoice.scr"),
    attachment(None, disposition="attachment; filename*=utf-8''r%C3%A9sum%C3%A9.exe"),  # RFC 2231
    attachment(None, disposition='attachment; filename="=?utf-8?b?cmVzdW1lLmV4ZQ==?="'),  # RFC 2047
    attachment(None, content_type='application/octet-stream; name="invoice.exe"', disposition="inline"),
    # A field that leaves out the disposition or the type: mail programs still show the name.
    attachment(None, disposition='filename="invoice.exe"'),
    attachment(None, disposition="filename*=utf-8''invoice.exe"),
    attachment(None, disposition='filename*0="invoice.e"; filename*1="xe"'),
    attachment(None, content_type='name="invoice.exe"', disposition="inline"),
])
def test_an_attachment_is_refused_by_its_file_name(plugin, part):
    assert refusal(plugin, mime(text(), part)) == REJECTED


@pytest.mark.parametrize("name", ["invoice.exe.pdf", "exe", "invoice.exec", "invoice.pdf"])
def test_other_file_names_pass(plugin, name):
    assert scan(plugin, mime(text(), attachment(name))) == (None, {})


def test_an_attachment_is_judged_by_its_declared_type(plugin):
    part = attachment("update.bin", content_type='Application/X-MSDownload; name="update.bin"')
    assert refusal(plugin, mime(text(), part)) == (
        Action.TEMPFAIL, 451, "4.7.1", "Message content deferred, try again later (EXECUTABLE_TYPE)")
    assert scan(plugin, mime(text(), attachment("update.bin"))) == (None, {})


@pytest.mark.parametrize("name, archive", [
    ("docs.zip", zip_of({"readme.txt": b"hi", "docs/setup.exe": b"MZ"})),
    ("docs.tar.gz", tar_of({"readme.txt": b"hi", "docs/setup.exe": b"MZ"})),
    ("docs.tgz", tar_of({"setup.exe": b"MZ"})),
    ("docs.tar", tar_of({"setup.exe": b"MZ"}, "w")),
    ("docs.tar.bz2", tar_of({"setup.exe": b"MZ"}, "w:bz2")),
    ("docs.tar.xz", tar_of({"setup.exe": b"MZ"}, "w:xz")),
    ("docs.pdf", zip_of({"setup.exe": b"MZ"})),  # a zip by its first bytes, whatever its name
    (None, zip_of({"setup.exe": b"MZ"})),
])
def test_a_file_inside_an_archive_is_judged_by_its_name(plugin, name, archive):
    assert refusal(plugin, mime(text(), attachment(name, archive))) == REJECTED


def test_an_archive_by_its_declared_type(plugin):
    part = attachment(None, tar_of({"setup.exe": b"MZ"}), content_type="application/x-gtar")
    assert refusal(plugin, mime(text(), part)) == REJECTED


@pytest.mark.parametrize("part", [
    attachment("C:\\Users\\me\\Setup.exe"),
    attachment("files.zip", zip_of({"docs/setup.exe": b"MZ"})),
    attachment("files.tgz", tar_of({"./bin/setup.exe": b"MZ"})),
])
def test_a_file_name_is_matched_without_its_directory(part):
    plugin = load(rules=[{"symbol": "SETUP", "filename": ["setup.exe"], "action": 1.0}])
    assert symbols(plugin, mime(text(), part)) == {"SETUP": 1.0}


def test_archives_inside_archives_are_not_opened(plugin):
    inner = zip_of({"setup.exe": b"MZ"})
    assert scan(plugin, mime(text(), attachment("outer.zip", zip_of({"inner.zip": inner})))) == (None, {})
    named = load(rules=[{"symbol": "INNER", "filename": ["inner.zip"], "action": 1.0}])
    assert symbols(named, mime(text(), attachment("outer.zip", zip_of({"inner.zip": inner})))) == {"INNER": 1.0}


CORRUPT = [
    attachment("broken.zip", b"PK\x03\x04" + b"\x00" * 200),
    attachment("broken.tgz", b"\x1f\x8b\x08\x00" + b"garbage" * 30),
    attachment("broken.tar", b"this is not a tar archive" * 30),
]


@pytest.mark.parametrize("part", CORRUPT)
def test_a_corrupt_archive_is_a_finding_of_its_own(plugin, part):
    assert scan(plugin, mime(text(), part)) == (None, {"ARCHIVE_CORRUPT": 1.0})
    assert refusal(load(corrupt_archive="reject"), mime(text(), part)) == (
        Action.REJECT, 550, "5.7.1", "Message content rejected (ARCHIVE_CORRUPT)")
    assert scan(load(corrupt_archive="off"), mime(text(), part)) == (None, {})


def test_a_good_archive_is_no_finding(plugin):
    good = attachment("docs.zip", zip_of({"readme.txt": b"hi"}))
    assert scan(plugin, mime(text(), good, attachment("docs.tgz", tar_of({"a.txt": b"hi"})))) == (None, {})


OCTET = "application/octet-stream"


@pytest.mark.parametrize("part", [
    # Mail programs differ in which name they show: every one counts.
    attachment(None, content_type=f'{OCTET}; name="setup.exe"', disposition='attachment; filename="a.pdf"'),
    attachment(None, disposition="attachment; filename=\"a.pdf\"; filename*=utf-8''setup.exe"),
    attachment(None, disposition="attachment; filename*=utf-8''a.pdf; filename=\"setup.exe\""),
    attachment("a.pdf").replace(b"\r\n\r\n", b'\r\nContent-Disposition: attachment; filename="setup.exe"\r\n\r\n', 1),
    # Archives by a name with what Windows ignores, or by their compression alone.
    attachment("files.tgz. ", tar_of({"setup.exe": b"MZ"})),
    attachment("files.gz", tar_of({"setup.exe": b"MZ"})),
    attachment(None, tar_of({"setup.exe": b"MZ"}, "w:bz2")),
    attachment(None, tar_of({"setup.exe": b"MZ"}, "w:xz")),
    attachment("files.zip.", b"junk before the archive" + zip_of({"setup.exe": b"MZ"})),
])
def test_every_name_an_attachment_gives_itself_counts(plugin, part):
    assert refusal(plugin, mime(text(), part)) == REJECTED


def test_compressed_data_that_is_no_tar_is_no_finding(plugin):
    assert scan(plugin, mime(text(), attachment("report.pdf.gz", gzip.compress(b"%PDF-1.4 " * 100)))) == (None, {})


@pytest.mark.parametrize("archives", [
    [{"setup.exe": b"MZ"}, {"readme.txt": b"hi"}],
    [{"readme.txt": b"hi"}, {"setup.exe": b"MZ"}],
])
def test_a_zip_of_two_archives_one_after_the_other_is_corrupt(plugin, archives):
    # Zip programs differ in which of them they show.
    joined = b"".join(zip_of(members) for members in archives)
    assert scan(plugin, mime(text(), attachment("files.zip", joined))) == (None, {"ARCHIVE_CORRUPT": 1.0})


# --- GTUBE -------------------------------------------------------------------------------


async def test_gtube_is_refused_by_default(mailproxy_policy):
    smtp = mailproxy_policy(headers, {})
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    result = await smtp.data(b"Subject: test\r\n\r\nThis is the GTUBE:\r\n" + GTUBE + b"\r\n")
    assert str(result) == "550 5.7.1 Message content rejected (GTUBE)"
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    assert str(await smtp.data(b"Subject: test\r\n\r\nHello.\r\n")) == "250 2.0.0 Ok: queued"


@pytest.mark.parametrize("part", [
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(b"test " + GTUBE),
    b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<b>"
    + GTUBE[:30] + b"=\r\n" + GTUBE[30:] + b"</b>\r\n",
])
def test_gtube_is_found_in_an_encoded_text_part(part):
    assert refusal(load(rules=[]), mime(text(), part))[3] == "Message content rejected (GTUBE)"


def test_gtube_can_score_or_be_off():
    message = b"Subject: test\r\n\r\n" + GTUBE + b"\r\n"
    assert scan(load(gtube=5), message) == (None, {"GTUBE": 5.0})
    assert scan(load(gtube="off"), message) == (None, {})
    assert scan(load(), message.replace(b"GTUBE", b"GTUBF")) == (None, {})


# --- several findings --------------------------------------------------------------------

SPAM = mime(b"Content-Type: text/plain\r\n\r\nPlease send 5 bitcoin.\r\n",
            head=b"Subject: viagra\r\nX-Mailer: BulkMailer\r\n")


def test_every_matching_rule_scores_under_its_own_symbol(plugin):
    assert symbols(plugin, SPAM) == {"SUBJECT_PILLS": 3.0, "BULK_MAILER": 2.0, "BITCOIN": 4.0}


async def test_the_points_of_all_matching_rules_count_against_the_threshold(mailproxy_policy):
    smtp = mailproxy_policy(headers, {"rules": RULES}, policy={"reject_score": 9})
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    result = await smtp.data(SPAM)
    assert (result.code, result.enhanced) == (550, "5.7.1")  # 3 + 2 + 4
    assert result.text.startswith("Message scored as spam")


async def test_a_rejecting_rule_wins_over_a_deferring_one(mailproxy_policy):
    smtp = mailproxy_policy(headers, {"rules": RULES})
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    both = mime(text(), attachment("update.exe", content_type="application/x-msdownload"),
                head=b"Subject: viagra\r\n")
    # EXECUTABLE_TYPE, listed first, only defers
    assert str(await smtp.data(both)) == "550 5.7.1 Message content rejected (BAD_ATTACHMENT)"
    assert smtp.envelope.symbols == {}  # a new transaction


def test_a_rule_that_is_off_is_not_tried():
    rules = [{**rule, "action": "off"} if rule["symbol"] == "BAD_ATTACHMENT" else rule for rule in RULES]
    assert scan(load(rules=rules), mime(text(), attachment("setup.exe"))) == (None, {})


async def test_observe_mode_records_no_points_and_enforces_no_refusal(mailproxy_policy):
    smtp = mailproxy_policy(headers, {"rules": RULES, "observe": True}, policy={"reject_score": 1})
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    assert str(await smtp.data(SPAM)) == "250 2.0.0 Ok: queued"
    await smtp.mail("someone@sender.test")
    await smtp.rcpt("rcpt@example.test")
    assert str(await smtp.data(b"Subject: t\r\n\r\n" + GTUBE + b"\r\n")) == "250 2.0.0 Ok: queued"


# --- which sessions ----------------------------------------------------------------------


def authenticated():
    session = client_session("192.0.2.1", mode="submission")
    session.authenticated, session.username = True, "alice@example.test"
    return session


@pytest.mark.parametrize("session", [
    lambda: client_session("127.0.0.1"),  # skip_clients: loopback and private networks
    lambda: client_session("10.1.2.3"),
    lambda: client_session("192.0.2.1", mode="submission"),  # modes: mx
    authenticated,
])
def test_sessions_that_are_not_judged(plugin, session):
    message = mime(text(GTUBE + b"\r\n"), attachment("setup.exe"))
    assert scan(plugin, message, session()) == (None, {})
    assert refusal(load(skip_clients=[], modes=["mx", "submission"]), message, client_session("127.0.0.1"))


# --- malformed messages ------------------------------------------------------------------

MALFORMED = [
    b"",
    b"\r\n",
    b"no header at all, no blank line",
    b"Subject\r\nno colon above\r\n\r\nbody\r\n",
    b"\x00\xff\xfe: \x80\r\n\r\n\x00\x00\xff",
    b"Content-Type: multipart/mixed\r\n\r\n--x\r\nno boundary declared\r\n",
    b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nnever closed',
    b"Content-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64",
    b"Content-Type: text/plain; charset=base64\r\n\r\ncharset names a codec that is no text encoding\r\n",
    b"Content-Type: text/plain; charset*=ut\x00f-8''x\r\n\r\nthe stdlib raises on this charset\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n!!!\r\nend\r\n",
    b"Content-Type: /\r\nSubject: =?utf-8?b?====?= =?utf-8?q?=ZZ?=\r\n\r\nx\r\n",
    mime(b"Content-Type: application/zip; name*0*=utf-8''a; name*=*x\r\n\r\nPK\x03\x04junk\r\n"),
]


@pytest.mark.parametrize("message", MALFORMED)
def test_a_malformed_message_is_judged_without_raising(plugin, message):
    scan(plugin, message)


def test_parse_defects_are_counted(plugin):
    clean, defects = checks("parse", "clean"), checks("parse", "defects")
    scan(plugin, mime(text()))
    scan(plugin, b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nopen')
    assert (checks("parse", "clean") - clean, checks("parse", "defects") - defects) == (1, 1)


# The stdlib's parser raises TypeError on this malformed RFC 2231 boundary.
UNPARSABLE = (b"Subject: test\r\nContent-Type: multipart/mixed; boundary*=*=utf-8''a; boundary*1=\"b\"\r\n\r\n"
              b"--ab\r\nContent-Type: text/plain\r\n\r\n" + GTUBE + b"\r\n--ab--\r\n")


def test_a_message_the_parser_gives_up_on_is_matched_by_its_raw_body_and_is_a_finding():
    failed = checks("parse", "failed")
    assert scan(load(gtube=2.0), UNPARSABLE) == (None, {"GTUBE": 2.0, "MIME_UNPARSABLE": 1.0})
    assert checks("parse", "failed") - failed == 1
    assert refusal(load(), UNPARSABLE)[3] == "Message content rejected (GTUBE)"
    assert scan(load(gtube="off", unparsable="off"), UNPARSABLE) == (None, {})


def test_a_message_the_parser_gives_up_on_is_matched_by_its_raw_bytes():
    # With an 8-bit byte in its body, the stdlib's get_payload() raises on it too.
    message = UNPARSABLE.replace(b"text/plain\r\n\r\n", b"text/plain; charset=utf-8\r\n\r\nCaf\xc3\xa9 ")
    assert scan(load(gtube=2.0), message) == (None, {"GTUBE": 2.0, "MIME_UNPARSABLE": 1.0})
    cafe = load(rules=[{"symbol": "CAFE", "body": "Caf\u00e9", "action": 1.0}], gtube="off", unparsable="off")
    assert symbols(cafe, message) == {"CAFE": 1.0}


def test_a_malformed_rfc_2231_file_name_still_counts(plugin):
    part = attachment(None, disposition="attachment; filename*=*=utf-8''a; filename*1=\"setup.exe\"")
    assert refusal(plugin, mime(text(), part)) == REJECTED


@settings(max_examples=300, deadline=None)
@given(head=st.binary(max_size=300), body=st.binary(max_size=600))
def test_any_bytes_are_judged_without_raising(plugin, head, body):
    # A multipart skeleton with arbitrary bytes in it, and arbitrary bytes alone.
    for message in (mime(head + b"\r\n\r\n" + body, head=head), head + body):
        answer = judge(plugin, message)
        assert answer is None or all(isinstance(verdict, Verdict) for verdict in answer)


# --- limits ------------------------------------------------------------------------------


def test_parts_beyond_max_parts_are_not_looked_at():
    # The message itself, multipart/mixed, is part 1, its text part 2.
    message = mime(text(), text(), attachment("setup.exe"))  # the attachment is part 4
    assert refusal(load(max_parts=4), message) == REJECTED
    hit = checks("limit", "max_parts")
    assert scan(load(max_parts=3), message) == LIMITED
    assert checks("limit", "max_parts") - hit == 1


def test_a_message_that_reaches_a_limit_is_a_finding_of_its_own():
    message = mime(text(), text(), attachment("setup.exe"))
    assert refusal(load(max_parts=3, mime_limit="reject"), message) == (
        Action.REJECT, 550, "5.7.1", "Message content rejected (MIME_LIMIT)")
    assert refusal(load(max_parts=3, mime_limit="tempfail"), message) == (
        Action.TEMPFAIL, 451, "4.7.1", "Message content deferred, try again later (MIME_LIMIT)")
    assert scan(load(max_parts=3, mime_limit="off"), message) == (None, {})
    assert scan(load(max_parts=4), message)[1] == {}


def test_the_parser_reads_only_as_many_delimiter_lines_as_max_parts_needs():
    # Two delimiter lines per part: the text's, the attachment's, the closing one.
    message = mime(text(), attachment("setup.exe"), text(), text())
    first_cut = message.index(b"--SEP", message.index(b"setup.exe"))  # the 3rd delimiter
    assert _mime.survey(message, _mime.Limits(1, 100, 100, 10)) == (first_cut, "max_parts")
    assert _mime.survey(message, _mime.Limits(5, 100, 100, 10)) == (len(message), None)


def test_lines_that_start_with_two_dashes_are_no_delimiters():
    # A signature, ASCII art, a quoted reply: no boundary of the message, no part.
    message = mime(text(b"-- \r\n" + b"-----\r\n" * 400 + b"--SEPARATE\r\n--SEP-\r\n"), attachment("setup.exe"))
    assert refusal(load(), message) == REJECTED
    assert refusal(load(max_parts=3), message) == REJECTED


def nested(depth: int, innermost: bytes) -> bytes:
    """A message of `depth` multiparts inside one another, each with its own boundary,
    the innermost holding the part `innermost`."""
    head = b"Subject: deep\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
                       for level in range(depth))
    closing = b"".join(b"--b%d--\r\n" % level for level in reversed(range(depth)))
    return head + opening + innermost + closing


def test_multiparts_deeper_than_max_depth_are_not_parsed():
    # The parser checks each line against every open boundary: its time grows with
    # the depth. The part beyond the limit is not looked at.
    assert refusal(load(), nested(10, attachment("setup.exe"))) == REJECTED
    hit = checks("limit", "max_depth")
    assert scan(load(), nested(11, attachment("setup.exe"))) == LIMITED
    assert checks("limit", "max_depth") - hit == 1
    assert refusal(load(max_depth=21), nested(21, attachment("setup.exe"))) == REJECTED
    # Closed multiparts are no depth: one after another, each one deep.
    siblings = mime(*(b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n--in\r\n' + text() + b"--in--\r\n"
                      for _ in range(25)), attachment("setup.exe"))
    assert refusal(load(max_depth=2), siblings) == REJECTED


def test_text_beyond_max_text_bytes_is_not_matched():
    message = mime(text(b"x" * 100 + b" send 5 bitcoin\r\n"))
    assert symbols(load(max_text_bytes=200), message) == {"BITCOIN": 4.0}
    hit = checks("limit", "max_text_bytes")
    assert symbols(load(max_text_bytes=110), message) == {}
    assert checks("limit", "max_text_bytes") - hit == 1
    long_subject = b"Subject: " + b"x" * 100 + b" viagra\r\n\r\nHello.\r\n"
    assert symbols(load(max_text_bytes=200), long_subject) == {"SUBJECT_PILLS": 3.0}
    assert symbols(load(max_text_bytes=100), long_subject) == {}


def test_members_beyond_max_archive_members_are_not_listed():
    members = {f"file{i}.txt": b"" for i in range(9)} | {"setup.exe": b"MZ"}  # the 10th
    for name, archive in (("files.zip", zip_of(members)), ("files.tgz", tar_of(members))):
        message = mime(text(), attachment(name, archive))
        assert refusal(load(max_archive_members=10), message) == REJECTED
        assert scan(load(max_archive_members=9), message) == LIMITED


def test_an_archive_larger_than_max_archive_bytes_is_not_opened():
    archive = zip_of({"setup.exe": b"MZ"})
    message = mime(text(), attachment("files.zip", archive))
    assert refusal(load(max_archive_bytes=len(archive)), message) == REJECTED
    assert scan(load(max_archive_bytes=len(archive) - 1), message) == LIMITED
    assert scan(load(max_archive_bytes=0), message) == LIMITED


def test_a_compressed_tar_is_unpacked_only_up_to_max_archive_bytes():
    # A megabyte of zeros packs into about a kilobyte; the .exe comes after it.
    bomb = tar_of({"zeros.bin": bytes(1_000_000), "setup.exe": b"MZ"})
    assert len(bomb) < 20_000
    message = mime(text(), attachment("files.tgz", bomb))
    assert refusal(load(max_archive_bytes=2_000_000), message) == REJECTED
    hit = checks("limit", "max_archive_bytes")
    assert scan(load(max_archive_bytes=500_000), message) == LIMITED  # cut short: not corrupt
    assert checks("limit", "max_archive_bytes") - hit == 1


def test_the_compressed_tars_of_a_message_share_one_unpacking_budget():
    # Each tar fits max_archive_bytes, all three do not: the third is cut short.
    padding = tar_of({"zeros.bin": bytes(1_000_000), "notes.txt": b"hi"})
    last = tar_of({"zeros.bin": bytes(1_000_000), "setup.exe": b"MZ"})
    message = mime(text(), attachment("a.tgz", padding), attachment("b.tgz", padding), attachment("c.tgz", last))
    assert scan(load(max_archive_bytes=2_500_000), message) == LIMITED
    assert refusal(load(max_archive_bytes=3_500_000), message) == REJECTED


@pytest.fixture
def parameter_lists_read(monkeypatch):
    """The size of every header value the email package splits into parameters (in
    time that grows with the square of its parameters)."""
    sizes = []
    get_param, get_params = Message.get_param, Message.get_params

    def reading(method, header_argument):
        def wrapper(self, *args, **kwargs):
            header = kwargs.get("header", args[header_argument] if len(args) > header_argument else "content-type")
            sizes.append(len(str(self.get(header, ""))))
            return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Message, "get_param", reading(get_param, 2))
    monkeypatch.setattr(Message, "get_params", reading(get_params, 1))
    return sizes


ABUSIVE = b'text/plain; x="' + b";" * 20_000 + b'"'  # 60,000 of them cost seconds a call


@pytest.mark.parametrize("message", [
    b"Subject: test\r\nContent-Type: " + ABUSIVE + b"\r\n\r\n" + GTUBE + b"\r\n",
    # Short, but folded over many lines with a parameter on each.
    mime(text(GTUBE + b"\r\n"), b"Content-Disposition: attachment; filename=a.txt" + b";\r\n " * 101 + b"\r\n\r\nx\r\n"),
    mime(text(GTUBE + b"\r\n"), b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: " + ABUSIVE
         + b"\r\n\r\nhello\r\n"),
])
def test_a_message_with_an_abusive_parameter_list_is_not_parsed(parameter_lists_read, message):
    # Its raw body is matched, and it is a MIME_LIMIT.
    skipped = checks("parse", "skipped")
    answer = scan(load(gtube=2.0), message)
    assert max(parameter_lists_read, default=0) <= _mime.FIELD_BYTES
    assert answer == (None, {"GTUBE": 2.0, "MIME_LIMIT": 3.0})
    assert checks("parse", "skipped") - skipped == 1


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("rule, problem", [
    ({"symbol": "X", "header": "Subject", "pattern": "(unclosed", "action": 1},
     "rules[1].pattern: '(unclosed' is not a regular expression: missing ), unterminated subpattern at position 0"),
    ({"symbol": "X", "body": "a{2,1}", "action": 1},
     "rules[1].body: 'a{2,1}' is not a regular expression: min repeat greater than max repeat at position 2"),
    ({"symbol": "bad symbol", "body": "a", "action": 1},
     "rules[1].symbol: 'bad symbol' is not a symbol: upper-case letters, digits and _, starting with a letter, "
     "at most 64 (like BAD_ATTACHMENT)"),
    ({"symbol": "X", "header": "Subject:", "pattern": "a", "action": 1},
     "rules[1].header: 'Subject:' is not a header name (like Subject or X-Mailer)"),
    ({"symbol": "X", "body": "a", "action": "refuse"},
     "rules[1].action: 'refuse' is not an action: use \"reject\", \"tempfail\", \"off\" or a number of points"),
    ({"symbol": "X", "body": "a"}, "rules[1].action: required key is missing"),
    ({"symbol": "X", "filename": [], "action": 1},
     "rules[1].filename: List should have at least 1 item after validation, not 0"),
    ({"symbol": "X", "body": "a", "mime_type": ["text/html"], "action": 1},
     "rules[1]: a rule looks at exactly one of header, body, filename, mime_type (this one: body, mime_type)"),
    ({"symbol": "X", "action": 1},
     "rules[1]: a rule looks at exactly one of header, body, filename, mime_type (this one: none)"),
    ({"symbol": "X", "header": "Subject", "action": 1},
     "rules[1]: header and pattern go together: the header's name, and the regular expression for its values"),
    ({"symbol": "X", "body": "a", "action": 1, "regex": "a"}, "rules[1].regex: unknown key"),
    ({"symbol": "GTUBE", "body": "a", "action": 1}, "rules: the symbol GTUBE of rules[1] is taken (built in)"),
    ({"symbol": "OK", "body": "a", "action": 1}, "rules: the symbol OK of rules[1] is taken (by rules[0])"),
])
def test_a_bad_rule_is_a_config_error_naming_its_key(rule, problem):
    with pytest.raises(ConfigError) as error:
        load(rules=[{"symbol": "OK", "body": "b", "action": 1}, rule])
    assert str(error.value) == f"config: plugin.headers.{problem}"


@pytest.mark.parametrize("options, problem", [
    ({"gtube": "never"}, "gtube: 'never' is not an action"),
    ({"max_parts": 0}, "max_parts: Input should be greater than or equal to 1"),
    ({"max_parts": 1001}, "max_parts: Input should be less than or equal to 1000"),
])
def test_bad_options_are_config_errors(options, problem):
    with pytest.raises(ConfigError) as error:
        load(**options)
    assert str(error.value).startswith(f"config: plugin.headers.{problem}")


# --- where a message is parsed ------------------------------------------------------------


def judged_while_ticking(plugin, message: bytes) -> tuple[list[Verdict] | None, int]:
    """The hook's answer, and how often another coroutine ran while the hook worked: 0
    when it parsed the message in the event loop, at least 1 when it waited for a thread."""

    return asyncio.run(counting_ticks(plugin.smtp_data(session=client_session(), message=message)))


def gtube_message(size: int) -> bytes:
    """A message of exactly `size` bytes with the GTUBE in its text."""
    message = b"Subject: test\r\n\r\n" + GTUBE + b"\r\n"
    return message + b"x" * (size - len(message) - 2) + b"\r\n"


def test_a_small_message_is_parsed_in_the_event_loop_a_big_one_in_a_thread():
    plugin = load(thread_bytes=4096)
    for size, parsed_in_a_thread in ((4095, False), (4096, True), (1_000_000, True)):
        answer, ticks = judged_while_ticking(plugin, gtube_message(size))
        assert [verdict.reply.text for verdict in answer] == ["Message content rejected (GTUBE)"]
        assert (ticks > 0) == parsed_in_a_thread, size


def test_by_default_a_message_of_64_kib_is_parsed_in_a_thread(plugin):
    assert judged_while_ticking(plugin, gtube_message(65535))[1] == 0
    assert judged_while_ticking(plugin, gtube_message(65536))[1] > 0


def test_a_thread_bytes_of_0_parses_every_message_in_a_thread():
    plugin = load(thread_bytes=0)
    answer, ticks = judged_while_ticking(plugin, mime(text()))
    assert answer is None and ticks > 0


def test_the_parsing_threads_let_the_process_exit_and_are_counted():
    # A parse that outlives its hook must not keep a stopping proxy alive.
    before = set(threading.enumerate())
    plugin = load(thread_bytes=0, threads=1)
    judge(plugin, mime(text()))
    started = set(threading.enumerate()) - before
    assert started and all(thread.daemon for thread in started)
    assert REGISTRY.get_sample_value("mailproxy_plugin_threads_busy", {"plugin": "headers"}) == 0


# --- metrics -----------------------------------------------------------------------------


def test_each_matching_rule_is_counted_under_its_symbol(plugin):
    before = {symbol: checks(symbol, "matched") for symbol in ("SUBJECT_PILLS", "BULK_MAILER", "BITCOIN", "GTUBE")}
    symbols(plugin, SPAM)
    after = {symbol: checks(symbol, "matched") - count for symbol, count in before.items()}
    assert after == {"SUBJECT_PILLS": 1, "BULK_MAILER": 1, "BITCOIN": 1, "GTUBE": 0}


def test_each_message_is_timed(plugin):
    labels = {"plugin": "headers", "check": "message"}
    before = REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) or 0.0
    scan(plugin, mime(text()))
    assert REGISTRY.get_sample_value("mailproxy_plugin_check_duration_seconds_count", labels) == before + 1


# --- fields in the obsolete syntax (RFC 5322 4.5.3: a space before the colon) -------------
# Receivers must read them as fields, and Postfix does; the email package ends the header
# block there, so everything after it would go unseen by the rules.

def test_a_header_rule_sees_a_field_written_with_a_space_before_its_colon(plugin):
    assert symbols(plugin, b"Subject : buy VIAGRA now\r\n\r\nHello.\r\n") == {"SUBJECT_PILLS": 3.0}
    assert symbols(plugin, b"X-Mailer\t: Bulk Mailer\r\nSubject: x\r\n\r\nHello.\r\n") == {"BULK_MAILER": 2.0}


def rfc822(inner: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\n" + inner


def digest(*parts: bytes) -> bytes:
    """A multipart/digest message: its parts, with no header of their own, are messages."""
    body = b"".join(b"--DIG\r\n\r\n" + part for part in parts)
    return b'Subject: t\r\nContent-Type: multipart/digest; boundary="DIG"\r\n\r\n' + body + b"--DIG--\r\n"


@pytest.mark.parametrize("message", [
    # Before the message's own MIME fields.
    mime(text(), attachment("invoice.exe"), head=b"Subject: test\r\nX-Junk : here\r\n"),
    # Before a part's own fields.
    mime(text(), b"X-Junk : here\r\n" + attachment("invoice.exe")),
    # In the header block of a message inside a message/rfc822 part.
    mime(text(), rfc822(b"X-Junk : here\r\n" + mime(attachment("invoice.exe")).replace(b"SEP", b"INNER"))),
    # In a message of a digest.
    digest(b"X-Junk : here\r\n" + mime(attachment("invoice.exe"))),
])
def test_an_attachment_after_such_a_field_is_still_refused(plugin, message):
    assert refusal(plugin, message) == REJECTED


def test_a_body_line_written_like_such_a_field_is_left_as_it_is():
    message = b"Subject: x\r\n\r\nNote : send 5 bitcoin\r\n-- \r\nName : kept\r\n"
    contents = _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10))
    assert contents.texts == ["Note : send 5 bitcoin\r\n-- \r\nName : kept\r\n"]


def test_a_message_too_abusive_to_parse_still_has_its_header_fields_read_so(plugin):
    fields = b"; a=b" * (_mime.FIELD_PARAMETERS + 1)
    message = b"Subject : buy viagra\r\nContent-Type: text/plain" + fields + b"\r\n\r\nHello.\r\n"
    assert symbols(plugin, message) == {"SUBJECT_PILLS": 3.0, "MIME_LIMIT": 3.0}


@pytest.mark.parametrize("message", [
    # To the parser: an mbox "From " line; a misplaced one; the body's first line; no field.
    b"From : <a@example.test>\r\nSubject: hi\r\n\r\nHello.\r\n",
    b"X-A: 1\r\nFrom : <a@example.test>\r\nSubject: hi\r\n\r\nHello.\r\n",
    b"Subject: hi\r\nFrom : <a@example.test>\r\n\r\nHello.\r\n",
    b"Subject: hi\r\nFrom\t: <a@example.test>\r\n\r\nHello.\r\n",
    mime(text()).replace(b"\r\n\r\n", b"\r\nFrom : <a@example.test>\r\n\r\n", 1).replace(b"test", b"hi", 1),
])
def test_a_from_field_with_a_space_before_its_colon_is_a_from_field(message):
    contents = _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10))
    assert contents.header("From") == ["<a@example.test>"]
    assert contents.header("Subject") == ["hi"]


EXE = attachment("invoice.exe")


@pytest.mark.parametrize("message", [
    # The second block of a message/delivery-status: the parser reads each as a header block.
    b"Content-Type: message/delivery-status\r\n\r\nA: 1\r\n\r\nX-Junk : 1\r\n" + EXE,
    # A delimiter line right after another: the parser skips both, closing or not.
    b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n--B--\r\nX-Junk : 1\r\n" + EXE,
    # One boundary declared twice, a digest's and an inner multipart's.
    b"Content-Type: multipart/digest; boundary=B\r\n\r\n--B\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\n\r\nX-Junk : 1\r\n" + EXE,
    # A line of a closed boundary with a colon in it, a field to the parser.
    b'Content-Type: multipart/mixed; boundary=O\r\n\r\n--O\r\nContent-Type: multipart/mixed; boundary="a:b"\r\n\r\n'
    b"--a:b--\r\n--O\r\n--a:b\r\nX-Junk : 1\r\n" + EXE,
    # "--x : y" before a part's fields: a field to Postfix and mail programs.
    mime(text(), b"--x : y\r\n" + EXE),
    # ... even where "x : y" is a boundary, declared in a text, not a part's.
    mime(text(b'Content-Type: multipart/mixed; boundary="x : y"\r\n'), b"--x : y\r\n" + EXE),
])
def test_an_attachment_after_such_a_field_anywhere_is_still_refused(plugin, message):
    assert refusal(plugin, message) == REJECTED


def test_a_line_that_would_be_a_delimiter_without_its_space_opens_no_part():
    # To mail programs, "--a :b" is a field of the text part, and what follows its body.
    message = (b'Content-Type: multipart/digest; boundary="a:b"\r\n\r\n--a:b\r\nContent-Type: text/plain\r\n'
               b"--a :b\r\nX-Junk : 1\r\n\r\n" + EXE + b"--a:b--\r\n")
    contents = _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10))
    assert contents.content_types == ["multipart/digest", "text/plain"]
    assert contents.file_names == []


def test_rewriting_such_fields_makes_no_delimiter_lines():
    # Were "--a :b" written "--a:b", each would open a part beyond what the survey
    # counted: the parser would take apart as many as there are.
    message = (b'Content-Type: multipart/mixed; boundary="a:b"\r\n\r\n--a:b\r\nX-A : 1\r\n'
               + b"--a :b\r\nX: y\r\n" * 5000)
    contents = _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10))
    assert contents.limits_hit == set()


def test_a_body_is_read_as_it_came_in_a_message_with_such_fields(plugin):
    # A member name of a quoted-printable zip starts a line, as a field in the obsolete
    # syntax would: the zip must still be read whole, and its .exe seen.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("A :b.txt", b"hi")
        archive.writestr("evil.exe", b"MZ")
    encoded = quopri.encodestring(buffer.getvalue()).replace(b"\n", b"\r\n")
    where = encoded.rfind(b"A :b.txt")
    encoded = encoded[:where] + b"=\r\n" + encoded[where:]  # a soft line break before it
    part = (b"Content-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + encoded + b"\r\n")
    assert refusal(plugin, mime(text(), part, head=b"Subject : test\r\n")) == REJECTED
    message = b"Subject : x\r\n\r\nPassword : hunter2\r\n"
    assert _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10)).texts == ["Password : hunter2\r\n"]


@pytest.mark.parametrize("part", [
    b"Content-Type: message/rfc822; name=a.exe\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\nMZ\x90\x00\r\n",
    b"Content-Type: message/global\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\nMZ\x90\x00\r\n",
])
def test_a_message_part_is_judged_by_the_names_it_gives_itself(plugin, part):
    assert refusal(plugin, mime(text(), part)) == REJECTED


def test_a_digest_part_is_judged_by_its_names_too(plugin):
    # A part of a digest with no Content-Type is a message/rfc822.
    message = (b'Subject: t\r\nContent-Type: multipart/digest; boundary="DIG"\r\n\r\n'
               b'--DIG\r\nContent-Disposition: attachment; filename="a.exe"\r\n\r\nMZ\r\n--DIG--\r\n')
    assert refusal(plugin, message) == REJECTED


def test_a_message_part_named_like_an_archive_is_no_corrupt_archive(plugin):
    part = b"Content-Type: message/rfc822; name=a.zip\r\n\r\nSubject: inner\r\n\r\nHello.\r\n"
    assert scan(plugin, mime(text(), part)) == (None, {})


def test_messages_nested_past_what_the_parser_follows_reach_a_limit():
    message = b"Content-Type: message/rfc822\r\n\r\n" * 1000 + mime(attachment("a.exe"))
    contents = _mime.MessageContents(message, _mime.Limits(10, 1000, 1000, 10))
    assert contents.limit_reached and contents.parse_failed
    strict = load(mime_limit="reject")
    assert refusal(strict, message)[0] is Action.REJECT


def test_a_part_that_says_multipart_but_has_no_boundary_is_judged_by_its_names(plugin):
    # The parser takes it for a leaf (a defect): its own names are all it has.
    part = b"Content-Type: multipart/mixed; name=a.exe\r\n\r\nMZ\x90\x00\r\n"
    assert refusal(plugin, mime(text(), part)) == REJECTED
