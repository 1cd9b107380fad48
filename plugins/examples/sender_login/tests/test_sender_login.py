"""The sender_login plugin, tested with mailproxy.testing only: scripted sessions
against the policy engine, and one session through a real proxy."""

import pytest

import mailproxy_sender_login as sender_login
from mailproxy.testing import ConfigError

ALICE, PASSWORD = "alice@example.test", "alice-secret"
USERS = {ALICE: PASSWORD}
OPTIONS = {"aliases": {ALICE: ["sales@example.test", "*@alice.example.test"]}}
NOT_OWNED = "553 5.7.1 <{}>: Sender address rejected: not owned by the logged-in user"


async def logged_in(mailproxy_policy, options=OPTIONS):
    smtp = mailproxy_policy(sender_login, options, mode="submission", users=USERS)
    await smtp.ehlo("laptop.example.test")
    assert str(await smtp.auth(ALICE, PASSWORD)) == "235 2.7.0 Authentication successful"
    return smtp


@pytest.mark.parametrize("sender", [ALICE, "Alice@Example.TEST", "sales@example.test", "news@alice.example.test", ""])
async def test_a_user_sends_as_themselves_an_alias_or_the_null_sender(mailproxy_policy, sender):
    smtp = await logged_in(mailproxy_policy)
    assert (await smtp.mail(sender)).code == 250


@pytest.mark.parametrize("sender", ["bob@example.test", "sales@example.test.evil", "alice@example.test.evil"])
async def test_anyone_else_s_address_is_refused(mailproxy_policy, sender):
    smtp = await logged_in(mailproxy_policy)
    assert str(await smtp.mail(sender)) == NOT_OWNED.format(sender)


async def test_a_login_without_aliases_has_only_its_own_address(mailproxy_policy):
    smtp = await logged_in(mailproxy_policy, options={})
    assert (await smtp.mail(ALICE)).code == 250
    await smtp.rset()
    assert (await smtp.mail("sales@example.test")).code == 553


async def test_the_null_sender_can_be_refused(mailproxy_policy):
    smtp = await logged_in(mailproxy_policy, options={**OPTIONS, "null_sender": False})
    assert str(await smtp.mail("")) == NOT_OWNED.format("")


async def test_a_session_without_login_is_not_judged(mailproxy_policy):
    smtp = mailproxy_policy(sender_login, OPTIONS)
    assert (await smtp.mail("bob@example.test")).code == 250


def test_aliases_are_lists_of_addresses(mailproxy_policy):
    # The plugin's name is its entry point's once installed, its module's before.
    with pytest.raises(ConfigError, match=r"plugin\.\w+\.aliases\.alice@example\.test: Input should be a valid list"):
        mailproxy_policy(sender_login, {"aliases": {ALICE: "sales@example.test"}})


def test_through_a_real_proxy(mailproxy_proxy):
    proxy = mailproxy_proxy(sender_login, OPTIONS, mode="submission", users=USERS)
    with proxy.client() as client:
        client.login(ALICE, PASSWORD)
        assert client.mail("bob@example.test") == (553, NOT_OWNED.format("bob@example.test")[4:].encode())
        client.rset()
        client.sendmail("sales@example.test", ["carol@example.org"], b"Subject: offer\r\n\r\nhello\r\n")
    assert proxy.upstream.messages == [b"Subject: offer\r\n\r\nhello"]
