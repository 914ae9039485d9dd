# SPDX-License-Identifier: GPL-3.0-or-later
"""PIN, PUK and management-key checks: constant-time comparisons, retry counters durable before the answer.

The comparison primitive is replaced by a spy (not grepped for): the tests
show that every check calls `hmac.compare_digest` on hash values (never on the
PIN itself) and that its result alone decides the answer.  The spy also reads
the card's store while the comparison runs, which shows the decremented
counter is already on disk then (PinSlot.verify: decrement, persist, compare).

When the first save fails no comparison is made (6581, the counter is
unchanged: no try was used and nothing was learnt); when the save that
restores the counter after a match fails, the card answers 6581, stays
unverified, and the counter stays decremented in memory and on disk (it is not
restored to full without being durable).
"""

from __future__ import annotations

import hmac
import types

import pytest

from ccidgadget.cards import pin as pin_module
from ccidgadget.cards.cac import CacCard
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.piv import applet as piv_applet
from ccidgadget.cards.pin import PinSlot
from ccidgadget.cards.storage import CardStore, StorageError

from .support import Client, block

PIN, PUK = "24681357", "97531864"
CAC_PIN = "87654321"
MGMT = bytes(range(1, 33))


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


@pytest.fixture
def piv(tmp_path):
    card = PivCard.create(CardStore(tmp_path / "piv"), pin=PIN, puk=PUK, mgmt_key=MGMT, mgmt_alg=0x0C)
    card.reset()
    client = Client(card.process_apdu)
    assert client.select_piv() == 0x9000
    return card, client


@pytest.fixture
def cac(tmp_path, cac_credentials):
    card = CacCard(cac_credentials, PinSlot.new(CAC_PIN.encode(), max_tries=3), card_id=bytes(range(14)),
                   store=CardStore(tmp_path / "cac"))
    card.save()
    card.reset()
    return card, Client(card.process_apdu)


class Spy:
    """Stands in for the `hmac` module of one card module; records and may override compare_digest."""

    def __init__(self, snapshot=None, result=None) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.snapshots: list = []
        self.snapshot = snapshot
        self.result = result

    def compare_digest(self, a, b) -> bool:
        self.calls.append((bytes(a), bytes(b)))
        if self.snapshot is not None:
            self.snapshots.append(self.snapshot())
        return hmac.compare_digest(a, b) if self.result is None else self.result


def spy_on(monkeypatch, module, **kw) -> Spy:
    spy = Spy(**kw)
    monkeypatch.setattr(module, "hmac", types.SimpleNamespace(compare_digest=spy.compare_digest))
    return spy


def verify(client: Client, value: str, p2: int = 0x80) -> int:
    return client.send(0x20, 0x00, p2, block(value))[1]


def stored_tries(store: CardStore, which: str = "pin") -> int:
    return store.load()[which]["tries_left"]


# -- constant time ------------------------------------------------------------------------------
def test_piv_every_pin_and_puk_check_is_one_compare_digest_on_hashes(piv, monkeypatch):
    card, client = piv
    spy = spy_on(monkeypatch, pin_module)
    steps = [
        (lambda: verify(client, "11111111"), 0x63C2),
        (lambda: verify(client, PIN), 0x9000),
        (lambda: client.send(0x24, 0x00, 0x80, block(PIN) + block("13572468"))[1], 0x9000),        # CHANGE PIN
        (lambda: client.send(0x24, 0x00, 0x81, block(PUK) + block("86420975"))[1], 0x9000),        # CHANGE PUK
        (lambda: client.send(0x2C, 0x00, 0x80, block("86420975") + block(PIN))[1], 0x9000),        # RESET RETRY
        (lambda: verify(client, "86420975", 0x81), 0x9000),                                         # VERIFY PUK
    ]
    for step, sw in steps:
        before = len(spy.calls)
        assert step() == sw
        assert len(spy.calls) == before + 1, "each check is exactly one compare_digest"
    secrets = {block(v) for v in (PIN, PUK, "11111111", "13572468", "86420975")}
    for a, b in spy.calls:
        assert len(a) == len(b) == pin_module.HASH_LEN, "hashes are compared, not PIN blocks"
        assert a not in secrets and b not in secrets


def test_piv_the_answer_is_what_compare_digest_says(piv, monkeypatch):
    card, client = piv
    spy_on(monkeypatch, pin_module, result=False)
    assert verify(client, PIN) == 0x63C2                 # the right PIN is refused when the primitive says no
    # Format 2: a "yes" for a wrong PIN no longer unlocks the card: the data key wrap, opened with the
    # key derived from the same PIN, is a second, cryptographic check (6581: integrity, counter not restored).
    spy_on(monkeypatch, pin_module, result=True)
    assert verify(client, "00000000") == 0x6581
    assert client.send(0x20, 0x00, 0x80)[1] == 0x63C1 and card.session is None
    spy_on(monkeypatch, pin_module, result=None)
    assert verify(client, PIN) == 0x9000 and card.session is not None


def test_piv_management_key_witness_compared_with_compare_digest(piv, monkeypatch):
    card, client = piv
    spy = spy_on(monkeypatch, piv_applet)
    assert client.authenticate(MGMT, 0x0C) == 0x9000
    assert len(spy.calls) == 1 and len(spy.calls[0][0]) == 16
    spy_on(monkeypatch, piv_applet, result=False)
    assert client.authenticate(MGMT, 0x0C) == 0x6982


def test_cac_pin_check_is_compare_digest_on_hashes(cac, monkeypatch):
    card, client = cac
    spy = spy_on(monkeypatch, pin_module)
    assert client.send(0x20, 0x00, 0x00, b"11111111")[1] == 0x63C2
    assert client.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x9000
    assert len(spy.calls) == 2
    assert all(len(a) == len(b) == pin_module.HASH_LEN for a, b in spy.calls)
    spy_on(monkeypatch, pin_module, result=False)
    card.reset()
    assert client.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x63C2


# -- counters durable before the comparison -----------------------------------------------------------
@pytest.mark.parametrize("candidate, sw", [("11111111", 0x63C2), (PIN, 0x9000)])
def test_piv_counter_is_on_disk_during_the_comparison(piv, monkeypatch, candidate, sw):
    card, client = piv
    spy = spy_on(monkeypatch, pin_module, snapshot=lambda: stored_tries(card.store))
    assert verify(client, candidate) == sw
    assert spy.snapshots == [2]                           # 3 tries, one used before comparing
    assert stored_tries(card.store) == (3 if sw == 0x9000 else 2)


def test_piv_puk_counter_is_on_disk_during_the_comparison(piv, monkeypatch):
    card, client = piv
    spy = spy_on(monkeypatch, pin_module, snapshot=lambda: stored_tries(card.store, "puk"))
    assert client.send(0x2C, 0x00, 0x80, block("00000000") + block(PIN))[1] == 0x63C2
    assert spy.snapshots == [2] and stored_tries(card.store, "puk") == 2


def failing_saves(monkeypatch, store: CardStore, ok: int) -> list[int]:
    """Let `ok` saves through, then fail every save as a full disk would."""
    real = store.save
    count = [0]

    def save(state):
        count[0] += 1
        if count[0] > ok:
            raise StorageError(f"cannot write {store.path}: no space left on the device")
        real(state)

    monkeypatch.setattr(store, "save", save)
    return count


def test_piv_first_save_fails_no_comparison_no_try_used(piv, monkeypatch):
    card, client = piv
    spy = spy_on(monkeypatch, pin_module)
    failing_saves(monkeypatch, card.store, ok=0)
    assert verify(client, PIN) == 0x6581
    assert verify(client, "11111111") == 0x6581
    assert spy.calls == []                                # no answer about the PIN without a durable try
    assert card.state.pin.tries_left == 3 and stored_tries(card.store) == 3
    assert client.send(0x20, 0x00, 0x80)[1] == 0x63C3      # not verified


def test_piv_restore_save_fails_counter_stays_decremented(piv, monkeypatch):
    card, client = piv
    assert verify(client, "11111111") == 0x63C2
    failing_saves(monkeypatch, card.store, ok=1)          # the decrement is saved, the restore is not
    assert verify(client, PIN) == 0x6581
    assert card.state.pin.tries_left == 1 and stored_tries(card.store) == 1
    assert client.send(0x20, 0x00, 0x80)[1] == 0x63C1      # not verified, not restored to full
    monkeypatch.undo()
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)
    assert verify(client, PIN) == 0x9000 and stored_tries(card.store) == 3


def test_cac_counter_is_on_disk_during_the_comparison(cac, monkeypatch):
    card, client = cac
    spy = spy_on(monkeypatch, pin_module, snapshot=lambda: stored_tries(card.store))
    assert client.send(0x20, 0x00, 0x00, b"11111111")[1] == 0x63C2
    assert client.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x9000
    assert spy.snapshots == [2, 1]
    assert stored_tries(card.store) == 3


def test_cac_save_failures(cac, monkeypatch):
    card, client = cac
    spy = spy_on(monkeypatch, pin_module)
    real_save = card.store.save
    failing_saves(monkeypatch, card.store, ok=0)
    assert client.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x6581
    assert spy.calls == [] and card.pin.tries_left == 3 and stored_tries(card.store) == 3
    monkeypatch.setattr(card.store, "save", real_save)
    failing_saves(monkeypatch, card.store, ok=1)          # the decrement is saved, the restore is not
    assert client.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x6581
    assert card.pin.tries_left == 2 and stored_tries(card.store) == 2 and not card.verified
