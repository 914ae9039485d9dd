"""PinSlot: hashing, counters persisted before comparison, lockout, PIV padding."""

import pytest

from ccidgadget.cards import pin
from ccidgadget.cards.iso7816 import ApduError
from ccidgadget.cards.pin import PinSlot, piv_check_padded, piv_pad
from ccidgadget.cards.storage import StorageError


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


def test_piv_pad():
    assert piv_pad("123456") == b"123456\xff\xff"
    assert piv_pad(b"12345678") == b"12345678"
    for bad in ("12345", "123456789", b"1234\xff6"):
        with pytest.raises(ValueError):
            piv_pad(bad)
    assert piv_check_padded(b"123456\xff\xff") == b"123456\xff\xff"
    for bad in (b"12345\xff\xff\xff", b"1234567", b"12\xff45678"):
        with pytest.raises(ApduError) as e:
            piv_check_padded(bad)
        assert e.value.sw == 0x6A80


def test_hash_not_plaintext():
    slot = PinSlot.new(piv_pad("123456"))
    text = repr(slot.to_dict())
    assert "123456" not in text and "MTIzNDU2" not in text


def test_verify_persists_before_compare_and_restores():
    slot = PinSlot.new(piv_pad("123456"), max_tries=3)
    seen = []
    slot.verify(piv_pad("123456"), lambda: seen.append(slot.tries_left))
    assert seen == [2, 3] and slot.tries_left == 3
    seen.clear()
    with pytest.raises(ApduError) as e:
        slot.verify(piv_pad("000000"), lambda: seen.append(slot.tries_left))
    assert e.value.sw == 0x63C2 and seen == [2]


def test_lockout_and_unblock():
    slot = PinSlot.new(piv_pad("123456"), max_tries=2)
    sws = []
    for _ in range(3):
        with pytest.raises(ApduError) as e:
            slot.verify(piv_pad("654321"), lambda: None)
        sws.append(e.value.sw)
    assert sws == [0x63C1, 0x63C0, 0x6983]
    assert slot.blocked and slot.status_error().sw == 0x6983
    with pytest.raises(ApduError) as e:          # even the right PIN is refused when blocked
        slot.verify(piv_pad("123456"), lambda: None)
    assert e.value.sw == 0x6983
    slot.set(piv_pad("111111"))
    assert slot.tries_left == 2
    slot.verify(piv_pad("111111"), lambda: None)


def test_storage_error_before_compare_leaves_counter():
    slot = PinSlot.new(piv_pad("123456"), max_tries=3)

    def fail():
        raise StorageError("disk full")
    with pytest.raises(StorageError):
        slot.verify(piv_pad("123456"), fail)
    assert slot.tries_left == 3


def test_roundtrip_and_kdf_params_kept(monkeypatch):
    slot = PinSlot.new(piv_pad("12345678"), max_tries=5, is_default=True)
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 5)     # later defaults do not affect old hashes
    again = PinSlot.from_dict(slot.to_dict())
    assert again.matches(piv_pad("12345678")) and not again.matches(piv_pad("12345679"))
    assert again.max_tries == 5 and again.is_default
    with pytest.raises(StorageError):
        PinSlot.from_dict({"kdf": {"name": "md5"}})
    with pytest.raises(ValueError):
        PinSlot.new(b"x" * 8, max_tries=16)
