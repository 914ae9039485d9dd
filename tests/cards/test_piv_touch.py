# SPDX-License-Identifier: GPL-3.0-or-later
"""The PIV touch policy (Yubico tag AB): NEVER, ALWAYS, CACHED 15 s, and the management key's touch."""

from __future__ import annotations

import pytest

from ccidgadget.cards import pin
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.presence import NO_PRESENCE, UserPresence
from ccidgadget.cards.tlv import parse_dict

from test_piv import sha256
from test_piv_support import PivClient


class Person(UserPresence):
    """Answers confirmations as scripted, and records what was asked."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    @property
    def available(self) -> bool:
        return True

    def confirm(self, what: str) -> bool:
        self.asked.append(what)
        return self.answers.pop(0)


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


@pytest.fixture
def card(tmp_path):
    c = PivCard.from_directory(tmp_path / "piv")
    c.reset()
    now = [1000.0]
    c.clock = lambda: now[0]
    c.now = now
    return c


@pytest.fixture
def host(card):
    h = PivClient(card)
    assert h.select()[1] == 0x9000
    h.authenticate()
    h.verify()
    return h


def test_always_asks_every_time_and_refuses_without_a_touch(host, card) -> None:
    host.generate(0x9A, 0x11, pin_policy=0x01, touch=0x02)
    card.presence = Person(True, False, True)
    d = sha256(b"m")
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x9000
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x6982          # deny / timeout / abort
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x9000
    assert card.presence.asked == ["PIV slot 9A ECDSA signature"] * 3


def test_no_presence_source_refuses(host, card) -> None:
    host.generate(0x9A, 0x11, pin_policy=0x01, touch=0x02)
    assert card.presence is NO_PRESENCE
    assert host.general_authenticate(0x11, 0x9A, sha256(b"m"))[1] == 0x6982


def test_cached_counts_a_touch_for_15_seconds(host, card) -> None:
    host.generate(0x9D, 0x11, pin_policy=0x01, touch=0x03)
    card.presence = Person(True, True)
    d = sha256(b"m")
    assert host.general_authenticate(0x11, 0x9D, d)[1] == 0x9000
    card.now[0] += 14.0
    assert host.general_authenticate(0x11, 0x9D, d)[1] == 0x9000          # within 15 s: no touch
    assert len(card.presence.asked) == 1
    card.now[0] += 1.5
    assert host.general_authenticate(0x11, 0x9D, d)[1] == 0x9000          # 15.5 s after: touch again
    assert len(card.presence.asked) == 2


def test_never_and_the_pin_comes_first(host, card) -> None:
    host.generate(0x9E, 0x11, pin_policy=0x01, touch=0x01)
    host.generate(0x9C, 0x11, touch=0x02)                                   # PIN ALWAYS, touch ALWAYS
    card.presence = Person(True)
    d = sha256(b"m")
    assert host.general_authenticate(0x11, 0x9E, d)[1] == 0x9000
    assert card.presence.asked == []
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x9000            # fresh VERIFY from the fixture
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x6982            # no fresh PIN: no touch asked
    assert card.presence.asked == ["PIV slot 9C ECDSA signature"]


def test_bad_input_is_refused_before_a_touch_is_asked(host, card) -> None:
    host.generate(0x9A, 0x07, pin_policy=0x01, touch=0x02)
    card.presence = Person()
    assert host.general_authenticate(0x07, 0x9A, b"short")[1] == 0x6A80
    assert card.presence.asked == []


def test_metadata_reports_the_touch_policy(host, card) -> None:
    host.generate(0x9D, 0x11, pin_policy=0x01, touch=0x03)
    assert parse_dict(host.ok(0xF7, 0, 0x9D))[0x02] == b"\x01\x03"


def test_management_key_with_touch(host, card) -> None:
    mgmt = card.state.management
    key = bytes(mgmt.key)
    # SET MANAGEMENT KEY with P2 FE: touch required (Yubico), same key.
    assert host.send(0xFF, 0xFF, 0xFE, bytes([mgmt.algorithm]) + bytes([0x9B, len(key)]) + key)[1] == 0x9000
    card.presence = Person(False, True)
    fresh = PivClient(card)
    fresh.select()
    assert fresh.authenticate() == 0x6982
    assert fresh.authenticate() == 0x9000
    assert card.presence.asked == ["PIV management key authentication"] * 2
