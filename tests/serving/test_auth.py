"""User tokens and the operator key (serving.auth): what a credential covers, and what is nobody."""

from __future__ import annotations

import pytest

from serving.auth import Caller, Credentials


def test_the_operator_key_covers_every_user():
    creds = Credentials("op-key")
    who = creds.caller("op-key")
    assert who == Caller(operator=True) and who.covers("anyone") and who.covers("else")


def test_a_token_covers_its_user_until_it_expires():
    creds = Credentials("op-key")
    token, expires = creds.issue("u:ü/1", ttl_s=600, now=1_000_000)
    assert expires == 1_000_600
    who = creds.caller(token, now=1_000_599)
    assert who == Caller(operator=False, user_id="u:ü/1") and who.covers("u:ü/1") and not who.covers("u:ü/2")
    assert creds.caller(token, now=1_000_600) is None  # expired


def test_tokens_of_another_key_forged_or_altered_are_nobody():
    creds, other = Credentials("op-key"), Credentials("rotated-key")
    token, _ = creds.issue("alice", 600, now=0)
    assert other.caller(token, now=1) is None  # rotating the operator key revokes every token
    prefix, user, exp, mac = token.split(".")
    bob = creds.issue("bob", 600, now=0)[0].split(".")[1]
    for bad in (f"{prefix}.{bob}.{exp}.{mac}", f"{prefix}.{user}.{int(exp) + 10**6}.{mac}", f"pt2.{user}.{exp}.{mac}",
                token + "x", "", "op-key ", "a.b.c", f"{prefix}.%%%.{exp}.{mac}", "pt1.\ud800.1.x"):  # fmt: skip
        assert creds.caller(bad, now=1) is None, bad


def test_an_empty_operator_key_is_refused():
    with pytest.raises(ValueError, match="operator key"):
        Credentials("")
