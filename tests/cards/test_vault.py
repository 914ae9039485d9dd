"""Keys at rest (issue 13): format 2 card states, the key hierarchy, migration, device secrets.

- a grep of the whole state directory after provisioning every card type (raw, base64, hex, PEM/DER,
  nested encodings decoded) finds no private key, PIN, PUK or management key;
- a copied state directory opens with the right PIN only, and with the device secret when one is
  configured; a tampered document or sealed record is refused with a precise message;
- VERIFY costs one KDF call and keeps the counter durable before the comparison; the data key
  leaves memory with the PIN status (reset, power-off, removal, VERIFY P1=FF, failure);
- format 1 PIV and CAC states are converted on open, atomically, with a backup only on request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci import skip_or_fail
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519

from ccidgadget.cards import pin, storage, vault
from ccidgadget.cards.cac import CacCard
from ccidgadget.cards.device_secret import DeviceSecret, DeviceSecretError, create_file_secret, read_file_secret
from ccidgadget.cards.keys import CardKey
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.storage import CardStore, IntegrityError, StorageError
from ccidgadget.cards.tlv import tlv
from ccidgadget.cards.vault import VaultOptions

import v1_states
from test_piv_support import PivClient

PIN, PUK, MGMT = "31415926", "27182818", bytes(range(0xA0, 0xB0))      # AES-128 management key
NEW_MGMT = bytes(range(0xC0, 0xE0))                                    # AES-256


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


# -- scanning a directory for secrets ---------------------------------------------------------------
_B64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2}){12,}")
_PEM = re.compile(rb"-----BEGIN [A-Z ]+-----(.*?)-----END [A-Z ]+-----", re.S)


def _layers(data: bytes, depth: int = 0) -> list[bytes]:
    """`data` and everything base64/hex/PEM inside it, decoded (two levels deep)."""
    out = [data]
    if depth == 2:
        return out
    found = [m.group(1).replace(b"\n", b"").replace(b"\\n", b"") for m in _PEM.finditer(data)]
    found += [m.group(0) for m in _B64.finditer(data)]
    for token in found:
        for fix in (b"", b"=", b"=="):
            try:
                out += _layers(base64.b64decode(token + fix, validate=False), depth + 1)
                break
            except (binascii.Error, ValueError):
                continue
    for m in _HEX.finditer(data):
        out += _layers(bytes.fromhex(m.group(0).decode()), depth + 1)
    return out


def _forms(secret: bytes) -> list[bytes]:
    b64 = base64.b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, b64.rstrip(b"=")]


def key_needles(key) -> dict[str, bytes]:
    """Byte strings that would betray a private key: its DER, PEM body and private numbers."""
    if isinstance(key, CardKey):
        key = key.private_key
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    out = {"PKCS#8 DER": der}
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        for name, v in (("p", n.p), ("q", n.q), ("d", n.d)):
            out[f"RSA {name}"] = v.to_bytes((v.bit_length() + 7) // 8, "big")
        out["RSA PKCS#1 DER"] = key.private_bytes(serialization.Encoding.DER,
                                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                                  serialization.NoEncryption())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        out["EC scalar"] = key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    else:
        out["raw 25519"] = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
    return out


def leaks(directory: Path, secrets: dict[str, bytes]) -> list[str]:
    found = []
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file():
            continue
        layers = _layers(path.read_bytes())
        for what, secret in secrets.items():
            for form in _forms(secret):
                if any(form in layer for layer in layers):
                    found.append(f"{path.name}: {what}")
                    break
    return found


def test_the_scanner_finds_what_format_1_leaves(tmp_path):
    made = v1_states.piv_v1(tmp_path / "v1")
    secrets = {f"9A {k}": v for k, v in key_needles(made["keys"][0x9A]).items()}
    secrets["management key"] = v1_states.MGMT
    found = leaks(tmp_path / "v1", secrets)
    assert "state.json: 9A PKCS#8 DER" in found and "state.json: 9A RSA p" in found
    assert "state.json: management key" in found             # in the clear, and inside 5FC109


# -- provisioning every card type ---------------------------------------------------------------------
def _cac_files(tmp_path: Path) -> tuple[list[str], list]:
    creds, files = [], []
    for i in range(3):
        key = rsa.generate_private_key(65537, 1024)
        cert = v1_states.self_signed(key, f"vault {i}")
        path = tmp_path / "cac-sources" / f"c{i}.pem"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(v1_states.pem(key).encode() + cert.public_bytes(serialization.Encoding.PEM))
        creds.append((cert, key))
        files.append(str(path))
    return files, creds


def provision_everything(state_dir: Path, tmp_path: Path, options: VaultOptions = vault.DEFAULT_OPTIONS):
    """A PIV card with keys in every kind of slot, a PIN-protected object and a new management key, and a
    CAC card; returns (PivCard, CacCard, secrets to look for)."""
    from ccidgadget.cards import provision
    secrets: dict[str, bytes] = {"PIN": PIN.encode(), "PUK": PUK.encode(), "PIN block": v1_states.pad(PIN),
                                 "PUK block": v1_states.pad(PUK), "management key": MGMT,
                                 "new management key": NEW_MGMT}
    piv = PivCard.create(CardStore(state_dir / "piv", options.device()), pin=PIN, puk=PUK, mgmt_key=MGMT,
                         mgmt_alg=0x08, options=options)
    piv.reset()
    h = PivClient(piv)
    h.select()
    assert h.authenticate(MGMT, 0x08) == 0x9000
    for slot, alg, policy in ((0x9A, 0x07, None), (0x9C, 0x14, None), (0x9E, 0x11, None), (0x82, 0xE0, 0x01),
                              (0x83, 0xE1, None)):
        h.generate(slot, alg, pin_policy=policy)
    imported = ec.generate_private_key(ec.SECP256R1())
    scalar = imported.private_numbers().private_value.to_bytes(32, "big")
    assert h.send(0xFE, 0x11, 0x9D, tlv(0x06, scalar))[1] == 0x9000
    assert h.put_object(0x5FC109, b"\x88\x12\x89\x10" + NEW_MGMT[:16]) == 0x9000     # ykman-style protected key
    assert h.send(0xFF, 0xFF, 0xFF, b"\x0C" + tlv(0x9B, NEW_MGMT))[1] == 0x9000       # SET MANAGEMENT KEY
    assert h.verify(PIN) == 0x9000
    for slot, entry in piv.state.keys.items():
        for what, needle in key_needles(entry.private(piv.state.vault, piv.session)).items():
            secrets[f"PIV {slot:02X} {what}"] = needle
    for what, needle in key_needles(imported).items():
        secrets[f"imported 9D {what}"] = needle
    # offline provisioning tools: a key imported and one generated without the PIN
    offline = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "offline.pem"
    key_file.write_text(v1_states.pem(offline))
    piv.reset()
    provision.import_key(state_dir / "piv", 0x84, key_file, options=options)
    provision.generate_key(state_dir / "piv", 0x85, provision.parse_algorithm("rsa1024"), options=options)
    for what, needle in key_needles(offline).items():
        secrets[f"offline import {what}"] = needle
    files, creds = _cac_files(tmp_path)
    (tmp_path / "cac-pin").write_text(v1_states.CAC_PIN)
    cac = CacCard.from_sources(state_dir / "cac", certs=files, pin=v1_states.CAC_PIN, options=options)
    secrets["CAC PIN"] = v1_states.CAC_PIN.encode()
    for i, (_, key) in enumerate(creds):
        for what, needle in key_needles(key).items():
            secrets[f"CAC {i} {what}"] = needle
    return piv, cac, secrets


def test_grep_of_the_state_directory_finds_no_secret(tmp_path):
    state = tmp_path / "state"
    piv, cac, secrets = provision_everything(state, tmp_path)
    again = PivCard.open(CardStore(state / "piv"))                 # offline edits included
    again.reset()
    h = PivClient(again)
    h.select()
    assert h.verify(PIN) == 0x9000
    for slot in (0x84, 0x85):
        for what, needle in key_needles(again.state.keys[slot].private(again.state.vault, again.session)).items():
            secrets[f"PIV {slot:02X} {what}"] = needle
    assert len([k for k in secrets if k.startswith("PIV")]) >= 20
    assert leaks(state, secrets) == []
    names = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert names == ["cac/state.json", "piv/state.json"]
    for name in names:
        doc = json.loads((state / name).read_text())
        assert doc["version"] == 2 and "mac" in doc and doc["vault"]["format"] == "ccidgadget-card/2"


# -- a copied state directory --------------------------------------------------------------------------
def _sign_9a(card: PivCard) -> int:
    h = PivClient(card)
    h.select()
    return h.general_authenticate(0x11, 0x9A, os.urandom(32))[1]


def _piv_with_9a(directory: Path, options: VaultOptions = vault.DEFAULT_OPTIONS) -> PivCard:
    card = PivCard.create(CardStore(directory, options.device()), pin=PIN, puk=PUK, options=options)
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.authenticate() == 0x9000
    h.generate(0x9A, 0x11)
    return card


def test_a_copied_directory_opens_with_the_right_pin_only(tmp_path):
    _piv_with_9a(tmp_path / "card")
    shutil.copytree(tmp_path / "card", tmp_path / "copy")
    doc = json.loads((tmp_path / "copy" / "state.json").read_text())
    store = CardStore(tmp_path / "copy")
    card = PivCard.open(store)
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.verify("00000000") == 0x63C2 and card.session is None
    assert _sign_9a(card) == 0x6982
    assert h.verify(PIN) == 0x9000 and card.session is not None
    assert _sign_9a(card) == 0x9000
    # offline, with the library only: a wrong PIN derives a key that opens no wrap
    record = pin.PinSlot.from_dict(doc["pin"], aad=card.state.vault.aad("piv/pin"))
    with pytest.raises(pin.ApduError):
        record.verify(v1_states.pad("00000000"), lambda: None)
    assert len(record.verify(v1_states.pad(PIN), lambda: None)) == vault.DATA_KEY_LEN
    assert PivCard.open(CardStore(tmp_path / "copy")).state.pin.tries_left == 3


def test_the_device_secret_is_required_in_addition(tmp_path):
    secret_file = tmp_path / "secret"
    create_file_secret(secret_file)
    options = VaultOptions(device_secret="file", device_secret_path=str(secret_file))
    _piv_with_9a(tmp_path / "card", options)
    shutil.copytree(tmp_path / "card", tmp_path / "copy")
    with pytest.raises(StorageError, match=r"bound to device secret 'file' \([0-9a-f]{16}\); this daemon is "
                                           r"configured with no device secret"):
        PivCard.open(CardStore(tmp_path / "copy"))
    other = tmp_path / "other"
    create_file_secret(other)
    with pytest.raises(StorageError, match="bound to device secret 'file'"):
        PivCard.open(CardStore(tmp_path / "copy", read_file_secret(other)))
    # Even past the binding check (forged to say "none"), the PIN alone derives the wrong key.
    doc = json.loads((tmp_path / "copy" / "state.json").read_text())
    card = PivCard.open(CardStore(tmp_path / "copy", read_file_secret(secret_file)), options=options)
    no_secret = pin.PinSlot.from_dict(doc["pin"], aad=card.state.vault.aad("piv/pin"))
    with pytest.raises(pin.ApduError):
        no_secret.verify(v1_states.pad(PIN), lambda: None)
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.verify(PIN) == 0x9000 and _sign_9a(card) == 0x9000


def test_device_secret_file_checks(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"x" * 8)
    os.chmod(short, 0o600)
    with pytest.raises(DeviceSecretError, match="at least 32"):
        read_file_secret(short)
    loose = tmp_path / "loose"
    loose.write_bytes(os.urandom(32))
    os.chmod(loose, 0o644)
    with pytest.raises(DeviceSecretError, match="mode 0644"):
        read_file_secret(loose)
    with pytest.raises(DeviceSecretError, match="No such file"):
        read_file_secret(tmp_path / "absent")
    with pytest.raises(FileExistsError):
        create_file_secret(loose)
    secret = create_file_secret(tmp_path / "new")
    assert secret.kind == "file" and len(secret.value) == 32 and secret.fingerprint != "none"
    assert secret.value.hex() not in repr(secret) and secret.fingerprint in secret.describe()


# -- tampering -----------------------------------------------------------------------------------------
def _edit(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_a_tampered_document_is_refused(tmp_path):
    _piv_with_9a(tmp_path / "card")
    path = tmp_path / "card" / "state.json"
    original = path.read_text()
    _edit(path, lambda d: d["pin"].__setitem__("tries_left", 15))
    with pytest.raises(IntegrityError, match="the MAC does not match the content .* refusing to use it"):
        CardStore(tmp_path / "card").load()
    path.write_text(original)
    _edit(path, lambda d: d.pop("mac"))
    with pytest.raises(IntegrityError, match="no MAC"):
        CardStore(tmp_path / "card").load()
    path.write_text(original)
    PivCard.open(CardStore(tmp_path / "card"))                       # the untouched file still opens


def test_sealed_records_carry_their_identity(tmp_path):
    """Without a device secret the MAC can be forged; the associated data still catches a changed policy
    or a blob moved to another object."""
    card = _piv_with_9a(tmp_path / "card")
    device = DeviceSecret()
    path = tmp_path / "card" / "state.json"

    def forge(fn):
        doc = json.loads(path.read_text())
        fn(doc)
        doc["mac"] = vault.document_mac(device, doc)
        path.write_text(json.dumps(doc))

    original = path.read_text()
    forge(lambda d: d["keys"]["9A"].__setitem__("pin_policy", "NEVER"))
    with pytest.raises(StorageError, match="its PIN policy does not match how it is sealed"):
        PivCard.open(CardStore(tmp_path / "card"))
    path.write_text(original)
    forge(lambda d: d["keys"]["9A"].__setitem__("touch_policy", "ALWAYS"))
    forged = PivCard.open(CardStore(tmp_path / "card"))
    forged.reset()
    h = PivClient(forged)
    h.select()
    assert h.verify(PIN) == 0x9000
    assert _sign_9a(forged) == 0x6581                                # the key no longer opens
    path.write_text(original)
    # the 9E device-sealed attestation key moved over the management key's record
    forge(lambda d: d["management_key"].__setitem__("sealed", d["keys"]["F9"]["sealed"]))
    with pytest.raises(IntegrityError, match="management-key"):
        PivCard.open(CardStore(tmp_path / "card"))
    del card


# -- VERIFY: one KDF, tearing-safe counter, data key lifetime ----------------------------------------
def count_kdf_calls(monkeypatch, directory: Path, record: str) -> list[int]:
    """Every scrypt call from now on appends the stored tries_left of PIN record `record` at that moment."""
    calls: list[int] = []
    real = pin._kdf

    def counting(value, salt, n, r, p):
        calls.append(CardStore(directory).load()[record]["tries_left"])
        return real(value, salt, n, r, p)

    monkeypatch.setattr(pin, "_kdf", counting)
    return calls


def test_verify_is_one_kdf_call_and_the_counter_is_durable_before_it(tmp_path, monkeypatch):
    card = _piv_with_9a(tmp_path / "card")
    calls = count_kdf_calls(monkeypatch, tmp_path / "card", "pin")
    h = PivClient(card)
    h.select()
    assert h.verify(PIN) == 0x9000
    assert calls == [2]                  # one scrypt call, made after the decremented counter was saved
    assert h.verify("00000000") == 0x63C2 and calls == [2, 2]
    assert h.send(0x24, 0x00, 0x80, v1_states.pad(PIN) + v1_states.pad("11223344"))[1] == 0x9000
    assert len(calls) == 4               # CHANGE REFERENCE DATA: the old value and the new one


def test_the_data_key_lives_as_long_as_the_pin_status(tmp_path):
    card = _piv_with_9a(tmp_path / "card")
    h = PivClient(card)
    h.select()

    def unlocked() -> bool:
        assert h.verify(PIN) == 0x9000
        session = card.session
        assert session is not None and not session.closed
        return session

    s = unlocked()
    assert "dek" not in repr(s) and repr(s._dek).startswith("SecretBytes(32 bytes")
    card.reset()
    assert card.session is None and s.closed and s._dek.wiped
    h.select()
    s = unlocked()
    assert h.send(0x20, 0xFF, 0x80)[1] == 0x9000 and s.closed            # VERIFY P1=FF
    s = unlocked()
    assert h.verify("00000000") == 0x63C2 and s.closed                    # a failed VERIFY
    s = unlocked()
    assert card.state.keys[0x9A]._clear is not None or _sign_9a(card) == 0x9000
    asyncio.run(_power_off(card))
    assert s.closed and card.session is None and card.state.keys[0x9A]._clear is None
    card.insert()
    asyncio.run(_power_on(card))
    s = unlocked()
    card.remove()
    asyncio.run(_drain(card))
    assert s.closed


async def _power_off(card):
    await card.start()
    await card.power_off()
    await card._run(lambda: None)


async def _power_on(card):
    await card.power_on()


async def _drain(card):
    await card._run(lambda: None)


def test_a_pin_change_rewraps_only_the_data_key(tmp_path):
    card = _piv_with_9a(tmp_path / "card")
    before = json.loads((tmp_path / "card" / "state.json").read_text())
    h = PivClient(card)
    h.select()
    assert h.send(0x24, 0x00, 0x80, v1_states.pad(PIN) + v1_states.pad("55667788"))[1] == 0x9000
    after = json.loads((tmp_path / "card" / "state.json").read_text())
    assert after["pin"]["wrap"] != before["pin"]["wrap"] and after["pin"]["salt"] != before["pin"]["salt"]
    for key in ("keys", "puk", "vault", "management_key", "sealed_objects"):
        assert after[key] == before[key], key
    again = PivCard.open(CardStore(tmp_path / "card"))
    again.reset()
    assert PivClient(again).select()[1] == 0x9000
    assert PivClient(again).verify("55667788") == 0x9000 and _sign_9a(again) == 0x9000


def test_puk_unblocks_and_the_keys_stay(tmp_path):
    card = _piv_with_9a(tmp_path / "card")
    h = PivClient(card)
    h.select()
    for _ in range(3):
        h.verify("00000000")
    assert h.verify(PIN) == 0x6983
    assert h.send(0x2C, 0x00, 0x80, v1_states.pad(PUK) + v1_states.pad("99887766"))[1] == 0x9000
    assert card.session is None                          # RESET RETRY COUNTER does not verify the PIN
    assert h.verify("99887766") == 0x9000 and _sign_9a(card) == 0x9000


def test_keys_used_without_a_pin_need_none(tmp_path, caplog):
    card = _piv_with_9a(tmp_path / "card")
    h = PivClient(card)
    h.select()
    assert h.authenticate() == 0x9000
    h.generate(0x9E, 0x11)
    again = PivCard.open(CardStore(tmp_path / "card"))
    assert "no device secret configured" in caplog.text and "only obfuscated at rest" in caplog.text
    again.reset()
    h = PivClient(again)
    h.select()
    assert h.general_authenticate(0x11, 0x9E, os.urandom(32))[1] == 0x9000       # 9E: no PIN
    assert h.send(0xF9, 0x9A, 0x00)[1] == 0x9000                                   # ATTEST: F9, no PIN
    assert h.authenticate() == 0x9000                                              # management key
    h.generate(0x9C, 0x11)                                                         # GENERATE: no PIN
    assert again.session is None
    assert h.verify(PIN) == 0x9000
    assert h.general_authenticate(0x11, 0x9C, os.urandom(32))[1] == 0x9000


# -- KDF cost ------------------------------------------------------------------------------------------
def test_kdf_cost_from_the_options_applies_to_new_wraps(tmp_path):
    options = VaultOptions(kdf=vault.KdfParams(2 ** 10, 1, 1))
    card = PivCard.create(CardStore(tmp_path / "card"), pin=PIN, puk=PUK, options=options)
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc["pin"]["kdf"] == {"name": "scrypt", "n": 1024, "r": 1, "p": 1}
    card = PivCard.open(CardStore(tmp_path / "card"), options=VaultOptions(kdf=vault.KdfParams(2 ** 11, 1, 1)))
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.send(0x24, 0x00, 0x80, v1_states.pad(PIN) + v1_states.pad("12121212"))[1] == 0x9000
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc["pin"]["kdf"]["n"] == 2048 and doc["puk"]["kdf"]["n"] == 1024


def test_vault_configuration_keys():
    from ccidgadget.daemon import config
    cfg = config.parse('[vault]\nkdf_log2_n = 15\nkdf_r = 8\ndevice_secret = "file"\n'
                       'device_secret_path = "/mnt/keys/ccidgadget.key"\nmigration_backup = true\n')
    assert cfg.vault.kdf == vault.KdfParams(2 ** 15, 8, 1) and cfg.vault.device_secret == "file"
    assert cfg.vault.device_secret_path == "/mnt/keys/ccidgadget.key" and cfg.vault.migration_backup
    assert config.DaemonOptions().vault is None and config.parse("").vault is None      # None: the defaults
    with pytest.raises(config.ConfigError) as e:
        config.parse('[vault]\nkdf_log2_n = 30\ndevice_secret = "tpm"\nsalt = 1\nkdf_r = 32\n'
                     'migration_backup = "yes"\n')
    text = str(e.value)
    for expected in ("vault.kdf_log2_n: 30 is not allowed; allowed: an integer 10..22",
                     "vault.device_secret_path: missing", "vault.salt: unknown key",
                     "vault.migration_backup: must be true or false"):
        assert expected in text
    with pytest.raises(config.ConfigError, match="1024 MiB"):
        config.parse("[vault]\nkdf_log2_n = 22\nkdf_r = 32\n")
    example = (Path(__file__).resolve().parents[2] / "etc" / "ccidgadget.toml.example").read_text()
    assert "\n[vault]\n" in example
    for key in vault.CONFIG_KEYS:
        assert f"\n#{key} = " in example, key


# -- migration from format 1 ---------------------------------------------------------------------------
def test_piv_format_1_is_converted_on_open(tmp_path, caplog):
    made = v1_states.piv_v1(tmp_path / "card")
    card = PivCard.open(CardStore(tmp_path / "card"))
    assert "converted from format 1" in caplog.text
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc["version"] == 2 and sorted(p.name for p in (tmp_path / "card").iterdir()) == ["state.json"]
    secrets = {"management key": v1_states.MGMT}
    for slot, key in made["keys"].items():
        secrets.update({f"{slot:02X} {k}": v for k, v in key_needles(key).items()})
    assert leaks(tmp_path / "card", secrets) == []
    # same keys, same PIN, the management key works, the protected object needs the PIN
    assert card.state.management.key == v1_states.MGMT
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.get_object(0x5FC109)[1] == 0x6982
    assert h.authenticate(v1_states.MGMT, 0x03) == 0x9000
    assert h.general_authenticate(0x11, 0x9E, os.urandom(32))[1] == 0x9000
    assert h.verify(v1_states.PIN) == 0x9000
    assert h.get_object(0x5FC109) == (tlv(0x53, made["printed"]), 0x9000)
    block = b"\x00\x01" + b"\xff" * 90 + b"\x00" + os.urandom(35)
    sig, sw = h.general_authenticate(0x06, 0x9A, block)
    numbers = made["keys"][0x9A].public_key().public_numbers()
    assert sw == 0x9000 and pow(int.from_bytes(sig, "big"), numbers.e, numbers.n) == int.from_bytes(block, "big")
    assert h.send(0x24, 0x00, 0x81, v1_states.pad(v1_states.PUK) + v1_states.pad("10203040"))[1] == 0x9000


def test_migration_backup_only_when_asked(tmp_path, caplog):
    v1_states.piv_v1(tmp_path / "a")
    original = (tmp_path / "a" / "state.json").read_bytes()
    PivCard.open(CardStore(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["state.json"]
    v1_states.piv_v1(tmp_path / "b")
    original = (tmp_path / "b" / "state.json").read_bytes()
    PivCard.open(CardStore(tmp_path / "b"), options=VaultOptions(migration_backup=True))
    backup = tmp_path / "b" / "state.json.v1.bak"
    assert backup.read_bytes() == original and (backup.stat().st_mode & 0o777) == 0o600
    assert "kept as" in caplog.text and "delete it once" in caplog.text


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace", "dirsync"])
def test_migration_interrupted_at_any_step_leaves_the_old_state(tmp_path, monkeypatch, fail_at):
    v1_states.piv_v1(tmp_path / "card")
    original = (tmp_path / "card" / "state.json").read_bytes()
    target = {"write": "write", "fsync": "fsync", "replace": "replace", "dirsync": "open"}[fail_at]
    real = getattr(storage.os, target)
    calls = [0]

    def crash(*args, **kw):
        if target == "open" and not (len(args) > 1 and args[1] & os.O_DIRECTORY):
            return real(*args, **kw)
        calls[0] += 1
        raise OSError(5, "simulated power cut")

    monkeypatch.setattr(storage.os, target, crash)
    with pytest.raises(StorageError):
        PivCard.open(CardStore(tmp_path / "card"))
    monkeypatch.undo()
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)
    now = (tmp_path / "card" / "state.json").read_bytes()
    assert now == original or (fail_at == "dirsync" and json.loads(now)["version"] == 2)
    card = PivCard.open(CardStore(tmp_path / "card"))              # and the next start converts it
    assert json.loads((tmp_path / "card" / "state.json").read_text())["version"] == 2
    assert card.state.management.key == v1_states.MGMT


def kill_9_while_opening(tmp_path: Path, card_class: str, make, check, rounds: int) -> dict:
    """A child process opens (so converts) the card `make(directory)` wrote, with ``card_class.open``
    ("module:Class"), and is SIGKILLed at random moments; after each kill the file is the old one or a
    converted one, the next open works (`check(directory, made)`) and no stray file is left."""
    import random
    import time
    rng = random.Random(int(os.environ.get("CCIDGADGET_FAULT_SEED", "13")))
    repo = Path(__file__).resolve().parents[2]
    module, cls = card_class.split(":")
    outcomes = {"old": 0, "new": 0}
    script = ("import sys, time, logging; sys.path[:0] = [sys.argv[1]]\n"
              "from ccidgadget.cards import pin; pin.SCRYPT_N = 16\n"
              f"from {module} import {cls} as Card\nfrom ccidgadget.cards.storage import CardStore\n"
              "print('ready', flush=True); sys.stdin.readline()\n"
              "Card.open(CardStore(sys.argv[2]))\nprint('done', flush=True); time.sleep(30)\n")
    window = None                       # round 0 is not interrupted: it measures how long a conversion takes
    for rnd in range(rounds):
        d = tmp_path / f"c{rnd}"
        made = make(d)
        original = (d / "state.json").read_bytes()
        child = subprocess.Popen([sys.executable, "-c", script, str(repo), str(d)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        if window is None:
            start = time.monotonic()
            assert child.stdout.readline() == "done\n"
            window = 1.3 * (time.monotonic() - start)
        else:
            time.sleep(rng.uniform(0, window))
        child.send_signal(signal.SIGKILL)
        child.wait()
        now = (d / "state.json").read_bytes()
        doc = json.loads(now)
        assert now == original or (doc["version"] == 2 and "vault" in doc and "mac" in doc)
        outcomes["old" if now == original else "new"] += 1
        check(d, made)
        assert [p.name for p in d.iterdir() if not p.name.startswith(".state.json.")] == ["state.json"]
    return outcomes


def test_kill_9_during_migration_leaves_old_or_new(tmp_path):
    """A child process converts format 1 cards and is SIGKILLed at random moments."""
    def check(d: Path, made: dict) -> None:
        card = PivCard.open(CardStore(d))
        assert card.state.management.key == v1_states.MGMT
        assert card.state.keys[0x9A].key.matches(made["keys"][0x9A].public_key())

    outcomes = kill_9_while_opening(tmp_path, "ccidgadget.cards.piv:PivCard", v1_states.piv_v1, check, 12)
    print("kill -9 during migration:", outcomes)


def test_cac_format_1_is_converted_and_keeps_its_pin(tmp_path):
    files, creds = _cac_files(tmp_path)
    v1_states.cac_v1(tmp_path / "cac", creds)
    card = CacCard.from_state(tmp_path / "cac")
    assert json.loads((tmp_path / "cac" / "state.json").read_text())["version"] == 2
    secrets = {"PIN": v1_states.CAC_PIN.encode()}
    for i, (_, key) in enumerate(creds):
        secrets.update({f"{i} {k}": v for k, v in key_needles(key).items()})
    assert leaks(tmp_path / "cac", secrets) == []
    card.reset()
    assert cac_sign(card, 0, None)[1] == 0x6982
    assert card.process_apdu(b"\x00\x20\x00\x00\x08" + v1_states.CAC_PIN.encode())[-2:] == b"\x90\x00"
    sig, sw = cac_sign(card, 0, creds[0][1])
    assert sw == 0x9000
    again = CacCard.from_sources(tmp_path / "cac", certs=files, pin=v1_states.CAC_PIN)
    assert again.vault.uid == card.vault.uid                          # same PIN: the same data key
    other = CacCard.from_sources(tmp_path / "cac", certs=files, pin="77777777")
    assert other.vault.uid != card.vault.uid                          # a new PIN from the configuration
    other.reset()
    assert other.process_apdu(b"\x00\x20\x00\x00\x08" + b"77777777")[-2:] == b"\x90\x00"
    assert cac_sign(other, 2, creds[2][1])[1] == 0x9000


def cac_sign(card: CacCard, index: int, key) -> tuple[bytes, int]:
    """SELECT PKI applet `index`, SIGN/DECRYPT a random block; check it with `key`'s public half."""
    r = card.process_apdu(bytes.fromhex("00A4040007A00000007901") + bytes((index,)))
    assert r[-2:] == b"\x90\x00", r.hex()
    block = b"\x00\x01" + os.urandom(126)
    r = card.process_apdu(b"\x80\x42\x00\x00\x80" + block)
    sig, sw = r[:-2], int.from_bytes(r[-2:], "big")
    if sw == 0x9000:
        numbers = key.public_key().public_numbers()
        assert pow(int.from_bytes(sig, "big"), numbers.e, numbers.n) == int.from_bytes(block, "big")
    return sig, sw


# -- TPM 2.0 (swtpm) and the Raspberry Pi OTP (fake vcmailbox) -----------------------------------------
def _swtpm_tools_missing() -> list[str]:
    return [t for t in ("swtpm", "tpm2_createprimary", "tpm2_create", "tpm2_load", "tpm2_unseal",
                        "tpm2_flushcontext") if shutil.which(t) is None]


@pytest.fixture
def swtpm(tmp_path):
    missing = _swtpm_tools_missing()
    if missing:
        skip_or_fail(f"missing {missing}: install Debian's swtpm, swtpm-tools, tpm2-tools, libtss2-tcti-swtpm0")
    import socket
    ports = []
    while not ports:            # the swtpm TCTI talks to the control port at port + 1
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            try:
                b.bind(("127.0.0.1", a.getsockname()[1] + 1))
            except OSError:
                continue
            ports = [a.getsockname()[1], a.getsockname()[1] + 1]
    state = tmp_path / "swtpm"
    state.mkdir()
    # --daemon returns once the sockets listen (a probing connection would wedge swtpm's one-client server)
    subprocess.run(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                    "--server", f"type=tcp,port={ports[0]},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={ports[1]},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear", "--daemon", "--pid", f"file={state}/pid"],
                   check=True, timeout=30)
    pid = int((state / "pid").read_text())
    yield f"swtpm:host=127.0.0.1,port={ports[0]}"
    os.kill(pid, signal.SIGTERM)


def test_tpm_sealed_device_secret_against_swtpm(tmp_path, swtpm):
    from ccidgadget.cards.device_secret import tpm_seal, tpm_unseal
    sealed = tpm_seal(tmp_path / "tpm", tcti=swtpm)
    assert sorted(p.name for p in (tmp_path / "tpm").iterdir()) == ["seal.priv", "seal.pub"]
    assert sealed.value not in (tmp_path / "tpm" / "seal.priv").read_bytes()
    assert tpm_unseal(tmp_path / "tpm", tcti=swtpm) == sealed
    assert tpm_unseal(tmp_path / "tpm", tcti=swtpm) == sealed        # no leftover transient objects
    with pytest.raises(DeviceSecretError, match="already holds"):
        tpm_seal(tmp_path / "tpm", tcti=swtpm)
    options = VaultOptions(device_secret="tpm", device_secret_path=str(tmp_path / "tpm"), tpm_tcti=swtpm)
    card = _piv_with_9a(tmp_path / "card", options)
    assert json.loads((tmp_path / "card" / "state.json").read_text())["vault"]["device"] == {
        "kind": "tpm", "check": sealed.fingerprint}
    with pytest.raises(StorageError, match="bound to device secret 'tpm'"):
        PivCard.open(CardStore(tmp_path / "card"))
    again = PivCard.open(CardStore(tmp_path / "card", options.device()), options=options)
    again.reset()
    assert PivClient(again).select()[1] == 0x9000 and PivClient(again).verify(PIN) == 0x9000
    assert _sign_9a(again) == 0x9000
    # another TPM (a fresh swtpm state) cannot unseal the blobs
    del card


def test_tpm_errors_are_precise(tmp_path):
    from ccidgadget.cards.device_secret import tpm_unseal
    with pytest.raises(DeviceSecretError, match="seal.pub missing"):
        tpm_unseal(tmp_path)
    if not _swtpm_tools_missing():
        (tmp_path / "seal.pub").write_bytes(b"junk")
        (tmp_path / "seal.priv").write_bytes(b"junk")
        with pytest.raises(DeviceSecretError, match="tpm2_"):
            tpm_unseal(tmp_path, tcti="swtpm:host=127.0.0.1,port=9")


VCMAILBOX_OUTPUT = ("0x00000040 0x80000000 0x00030081 0x00000028 0x80000028 0x00000000 0x00000008 "
                    "0xf8dbc7b0 0xa4fcfb1d 0x706e298a 0xc9d0485c 0x2226ce8d 0xf7f7596a 0xc77337bd 0x09fbe160 "
                    "0x00000000\n")


def _fake_vcmailbox(tmp_path: Path, output: str, status: int = 0) -> str:
    tool = tmp_path / "vcmailbox"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\nprintf '%s' '{output}'\nexit {status}\n")
    tool.chmod(0o755)
    return str(tool)


def test_rpi_otp_private_key_through_vcmailbox(tmp_path):
    from ccidgadget.cards.device_secret import parse_vcmailbox_private_key, read_rpi_otp
    raw = parse_vcmailbox_private_key(VCMAILBOX_OUTPUT)
    assert raw.hex() == "f8dbc7b0a4fcfb1d706e298ac9d0485c2226ce8df7f7596ac77337bd09fbe160"
    secret = read_rpi_otp(_fake_vcmailbox(tmp_path, VCMAILBOX_OUTPUT))
    assert (tmp_path / "args").read_text().split() == ["0x00030081", "40", "40", "0", "8"] + ["0"] * 8
    assert secret.kind == "rpi-otp" and len(secret.value) == 32 and secret.value != raw
    zero = VCMAILBOX_OUTPUT.split()[:7] + ["0x00000000"] * 9
    with pytest.raises(DeviceSecretError, match="not programmed"):
        read_rpi_otp(_fake_vcmailbox(tmp_path, " ".join(zero)))
    refused = VCMAILBOX_OUTPUT.replace("0x80000000", "0x80000001", 1)
    with pytest.raises(DeviceSecretError, match="refused"):
        parse_vcmailbox_private_key(refused)
    with pytest.raises(DeviceSecretError, match="did not answer"):
        parse_vcmailbox_private_key("0x0000000c 0x80000000 0x00000000")
    with pytest.raises(DeviceSecretError, match="failed"):
        read_rpi_otp(_fake_vcmailbox(tmp_path, "", status=1))
    with pytest.raises(DeviceSecretError, match="not found"):
        read_rpi_otp(str(tmp_path / "nothing-here"))
    options = VaultOptions.with_device(secret)
    card = _piv_with_9a(tmp_path / "card", options)
    assert json.loads((tmp_path / "card" / "state.json").read_text())["vault"]["device"]["kind"] == "rpi-otp"
    del card


# -- memory ---------------------------------------------------------------------------------------------
def test_process_is_not_dumpable_and_keys_sit_in_locked_pages(tmp_path):
    from ccidgadget.cards import secmem
    code = ("import sys; sys.path[:0]=[sys.argv[1]]\nfrom ccidgadget.cards import secmem\n"
            "print(secmem.harden_process())\nimport ctypes\n"
            "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n")               # PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2])],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "0"]
    s = secmem.SecretBytes(b"k" * 32)
    assert secmem.protections()["dontdump"] is True
    assert s.value() == b"k" * 32 and "kkkk" not in repr(s)
    s.wipe()
    with pytest.raises(ValueError):
        s.value()


# -- the offline tools ----------------------------------------------------------------------------------
def test_card_commands_read_the_vault_configuration(tmp_path, capsys):
    from ccidgadget.cli_card import main_card
    secret = tmp_path / "keys" / "device.key"
    secret.parent.mkdir()
    assert main_card(["new-device-secret", "--file", str(secret)]) == 0
    assert "device secret written to" in capsys.readouterr().out and secret.stat().st_mode & 0o777 == 0o600
    conf = tmp_path / "ccidgadget.toml"
    conf.write_text(f'[vault]\ndevice_secret = "file"\ndevice_secret_path = "{secret}"\n')
    d = tmp_path / "card"
    assert main_card(["create", "--dir", str(d), "--config", str(conf), "--pin", PIN, "--puk", PUK,
                      "--kdf-log2-n", "10"]) == 0
    doc = json.loads((d / "state.json").read_text())
    assert doc["vault"]["device"]["kind"] == "file" and doc["pin"]["kdf"]["n"] == 1024
    assert main_card(["show", "--dir", str(d)]) == 1                      # no configuration: refused
    assert "bound to device secret 'file'" in capsys.readouterr().err
    assert main_card(["generate", "--dir", str(d), "--config", str(conf), "--slot", "9a",
                      "--algorithm", "eccp256"]) == 0
    assert main_card(["change-pin", "--dir", str(d), "--config", str(conf), "--old", PIN, "--new", "12344321"]) == 0
    assert main_card(["show", "--dir", str(d), "--config", str(conf), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"9a"' in out and PIN not in out
    options = VaultOptions(device_secret="file", device_secret_path=str(secret))
    card = PivCard.open(CardStore(d, options.device()), options=options)
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.verify("12344321") == 0x9000 and _sign_9a(card) == 0x9000
    assert main_card(["create", "--dir", str(tmp_path / "c2"), "--kdf-log2-n", "9"]) == 1
    assert "2^10" in capsys.readouterr().err


# -- the OpenPGP card ------------------------------------------------------------------------------------
from ccidgadget.cards.openpgp import OpenPgpCard                                 # noqa: E402
from ccidgadget.cards.openpgp import provision as pgp_provision                  # noqa: E402
from test_openpgp import CV25519_ATTR, ED25519_ATTR, P256_ECDSA_ATTR, T, Tx, _import, _s2k, apdu  # noqa: E402

PW1, PW3, RC = "24680246", "admin-13579", "reset-8642"
DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def pgp_verify(tx: Tx, ref: int, value: bytes) -> int:
    return tx(apdu(0, 0x20, 0, ref, value))[1]


def pgp_sign(tx: Tx, message: bytes = b"signed at rest") -> tuple[bytes, int]:
    """PSO:CDS of a SHA-256 hash (a DigestInfo for RSA) with the SIG key, as GnuPG sends it."""
    digest = hashlib.sha256(message).digest()
    alg = tx.card.state.keys[_KEY.SIG].algorithm
    data = DIGEST_INFO + digest if alg.is_rsa else digest
    return tx(apdu(0, 0x2A, 0x9E, 0x9A, data, le=256 if not alg.is_rsa else 0))


def pgp_card(directory: Path, options: VaultOptions = vault.DEFAULT_OPTIONS) -> tuple[OpenPgpCard, Tx]:
    card = OpenPgpCard.open(CardStore(directory, options.device()), options=options)
    card.reset()
    tx = Tx(card)
    tx.ok("00A4040006D27600012401")
    return card, tx


from ccidgadget.cards.openpgp.constants import KEY as _KEY                       # noqa: E402
import hashlib                                                                  # noqa: E402


def pgp_with_pws(directory: Path, options: VaultOptions) -> tuple[OpenPgpCard, Tx]:
    """A new OpenPGP card whose PW3 and PW1 are changed to PW3/PW1 (CHANGE REFERENCE DATA) and whose
    resetting code is set to RC (PUT DATA D3); PW3 is left verified."""
    card = OpenPgpCard.create(CardStore(directory, options.device()), options=options)
    card.reset()
    tx = Tx(card)
    tx.ok("00A4040006D27600012401")
    tx.ok(apdu(0, 0x24, 0, 0x83, b"12345678" + PW3.encode()))
    tx.ok(apdu(0, 0x24, 0, 0x81, b"123456" + PW1.encode()))
    assert pgp_verify(tx, 0x83, PW3.encode()) == 0x9000
    tx.ok(apdu(0, 0xDA, 0, 0xD3, RC.encode()))
    return card, tx


def provision_openpgp(state_dir: Path, tmp_path: Path, options: VaultOptions = vault.DEFAULT_OPTIONS):
    """Two OpenPGP cards: one provisioned through APDUs (new PW1/PW3, a resetting code, Ed25519 and P-256
    generated, a Cv25519 key imported, fingerprints written, both protected private DOs), one offline
    (RSA-2048 generated, brainpoolP256r1 and secp256k1 imported) that then turns the KDF-DO on; returns the
    secrets to look for."""
    secrets: dict[str, bytes] = {"OpenPGP PW1": PW1.encode(), "OpenPGP PW3": PW3.encode(), "OpenPGP RC": RC.encode(),
                                 "OpenPGP 0103": b"only after PW1: 0103", "OpenPGP 0104": b"only after PW3: 0104"}
    card, tx = pgp_with_pws(state_dir / "pgp", options)
    for tag, attrs in ((0xC1, ED25519_ATTR), (0xC2, CV25519_ATTR), (0xC3, P256_ECDSA_ATTR)):
        tx.ok(apdu(0, 0xDA, 0, tag, bytes.fromhex(attrs)))
    tx.long("0047800002B60000")
    tx.long("0047800002A40000")
    cv = x25519.X25519PrivateKey.generate()
    raw = cv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    assert _import(tx, "B8", [(0x92, raw[::-1])]) == 0x9000
    for tag in (0xC7, 0xC8, 0xC9):                         # the fingerprints GnuPG writes after GENERATE
        tx.ok(apdu(0, 0xDA, 0, tag, os.urandom(20)))
    tx.ok(apdu(0, 0xDA, 0x01, 0x04, secrets["OpenPGP 0104"]))
    assert pgp_verify(tx, 0x82, PW1.encode()) == 0x9000
    tx.ok(apdu(0, 0xDA, 0x01, 0x03, secrets["OpenPGP 0103"]))
    for k in _KEY:
        for what, needle in key_needles(card.state.private_key(k, card.session)).items():
            secrets[f"OpenPGP {k.name} {what}"] = needle
    # offline: a generated RSA-2048 key and two imported EC keys, sealed without any PIN
    offline = state_dir / "pgp-offline"
    pgp_provision.create_card(offline, pw1="112233", pw3="adm1n-pw3", options=options)
    pgp_provision.generate_key(offline, _KEY.SIG, pgp_provision.parse_algorithm("rsa2048"), options=options)
    for slot, curve in ((_KEY.DEC, ec.BrainpoolP256R1()), (_KEY.AUT, ec.SECP256K1())):
        key = ec.generate_private_key(curve)
        path = tmp_path / f"offline-{slot.name}.pem"
        path.write_text(v1_states.pem(key))
        pgp_provision.import_key(offline, slot, path, options=options)
        for what, needle in key_needles(key).items():
            secrets[f"OpenPGP offline {slot.name} {what}"] = needle
    secrets.update({"offline PW1": b"112233", "offline PW3": b"adm1n-pw3"})
    # ... then KDF on (§4.3.2, as `gpg --card-edit kdf-setup` writes it): the PWs are hashes from now on
    card2, tx2 = pgp_card(offline, options)
    for what, needle in key_needles(_opened_key(card2, tx2, b"112233", _KEY.SIG)).items():
        secrets[f"OpenPGP offline SIG {what}"] = needle
    salt, count = os.urandom(8), 0x00100000
    h1, h3 = _s2k(b"123456", salt, count), _s2k(b"12345678", salt, count)
    kdf = bytes.fromhex("810103 820108 8304") + count.to_bytes(4, "big") + T(0x84, salt) + T(0x87, h1) + T(0x88, h3)
    assert pgp_verify(tx2, 0x83, b"adm1n-pw3") == 0x9000
    tx2.ok(apdu(0, 0xDA, 0, 0xF9, kdf))
    new_h1 = _s2k(b"909090", salt, count)
    tx2.ok(apdu(0, 0x24, 0, 0x81, h1 + new_h1))
    secrets["offline PW1 as its KDF hash"] = new_h1
    return [card, card2], secrets


def _opened_key(card: OpenPgpCard, tx: Tx, pw1: bytes, key):
    assert pgp_verify(tx, 0x82, pw1) == 0x9000
    opened = card.state.private_key(key, card.session)
    tx.ok("0020FF82")
    return opened


def test_grep_of_the_state_directory_with_openpgp_cards_finds_no_secret(tmp_path):
    state = tmp_path / "state"
    _, _, secrets = provision_everything(state, tmp_path)
    cards, pgp_secrets = provision_openpgp(state, tmp_path)
    secrets.update(pgp_secrets)
    # 6 keys: Ed25519, Cv25519, P-256, RSA-2048, brainpoolP256r1, secp256k1 (RSA: DER, p, q, d, PKCS#1)
    assert len([k for k in secrets if k.startswith("OpenPGP") and "DER" in k]) >= 7
    assert leaks(state, secrets) == []
    names = sorted(p.relative_to(state).as_posix() for p in state.rglob("*") if p.is_file())
    assert names == ["cac/state.json", "pgp-offline/state.json", "pgp/state.json", "piv/state.json"]
    for name in names:
        doc = json.loads((state / name).read_text())
        assert doc["version"] == 2 and "mac" in doc and doc["vault"]["format"] == "ccidgadget-card/2"
    doc = json.loads((state / "pgp" / "state.json").read_text())
    assert all(k["sealed"]["by"] == "card" for k in doc["keys"].values())
    assert sorted(doc["sealed_private_dos"]) == ["0103", "0104"] and doc["private_dos"] == {}
    assert "interim_data_key" not in doc and all("wrap" in doc[p] for p in ("pw1", "pw3", "rc"))


def _pgp_with_keys(directory: Path, options: VaultOptions = vault.DEFAULT_OPTIONS) -> OpenPgpCard:
    """PW1/PW3/RC set, an Ed25519 SIG key and a P-256 AUT key generated on the card."""
    card, tx = pgp_with_pws(directory, options)
    tx.ok(apdu(0, 0xDA, 0, 0xC1, bytes.fromhex(ED25519_ATTR)))
    tx.ok(apdu(0, 0xDA, 0, 0xC3, bytes.fromhex(P256_ECDSA_ATTR)))
    tx.long("0047800002B60000")
    tx.long("0047800002A40000")
    tx.ok(apdu(0, 0xDA, 0, 0xC7, bytes(range(20))))
    card.reset()
    return card


def test_openpgp_copied_directory_opens_with_the_right_pw_only(tmp_path):
    _pgp_with_keys(tmp_path / "card")
    shutil.copytree(tmp_path / "card", tmp_path / "copy")
    card, tx = pgp_card(tmp_path / "copy")
    assert pgp_verify(tx, 0x81, b"00000000") == 0x63C2 and card.session is None
    assert pgp_sign(tx)[1] == 0x6982
    assert pgp_verify(tx, 0x83, b"not-the-admin") == 0x63C2 and card.session is None
    assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000 and card.session is not None
    assert pgp_sign(tx)[1] == 0x9000
    # offline, with the library only: wrong values derive keys that open no wrap; the right ones do
    doc = json.loads((tmp_path / "copy" / "state.json").read_text())
    for which, right in (("pw1", PW1), ("pw3", PW3), ("rc", RC)):
        record = pin.PinSlot.from_dict(doc[which], aad=card.state.vault.aad(f"openpgp/{which}"))
        with pytest.raises(pin.ApduError):
            record.verify(b"wrong-value", lambda: None)
        assert len(record.verify(right.encode(), lambda: None)) == vault.DATA_KEY_LEN
    # the data key opened with any of them opens the keys
    dek = pin.PinSlot.from_dict(doc["rc"], aad=card.state.vault.aad("openpgp/rc")).verify(RC.encode(), lambda: None)
    session = card.state.vault.open_session(dek)
    assert card.state.keys[_KEY.SIG].key.matches(card.state.private_key(_KEY.SIG, session).public_key)


def test_openpgp_device_secret_is_required_in_addition(tmp_path):
    secret_file = tmp_path / "secret"
    create_file_secret(secret_file)
    options = VaultOptions(device_secret="file", device_secret_path=str(secret_file))
    _pgp_with_keys(tmp_path / "card", options)
    with pytest.raises(StorageError, match=r"bound to device secret 'file' \([0-9a-f]{16}\); this daemon is "
                                           r"configured with no device secret"):
        OpenPgpCard.open(CardStore(tmp_path / "card"))
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    card, tx = pgp_card(tmp_path / "card", options)
    no_secret = pin.PinSlot.from_dict(doc["pw1"], aad=card.state.vault.aad("openpgp/pw1"))
    with pytest.raises(pin.ApduError):
        no_secret.verify(PW1.encode(), lambda: None)                # the PW alone derives the wrong key
    assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000 and pgp_sign(tx)[1] == 0x9000


def test_openpgp_verify_is_one_kdf_call_and_the_counter_is_durable_before_it(tmp_path, monkeypatch):
    _pgp_with_keys(tmp_path / "card")
    card, tx = pgp_card(tmp_path / "card")
    calls = count_kdf_calls(monkeypatch, tmp_path / "card", "pw1")
    assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000
    assert calls == [2]                  # one scrypt call, made after the decremented counter was saved
    assert pgp_verify(tx, 0x82, b"wrong-pin") == 0x63C2 and calls == [2, 2]
    tx.ok(apdu(0, 0x24, 0, 0x81, PW1.encode() + b"76543210"))
    assert len(calls) == 4               # CHANGE REFERENCE DATA: the old value and the new one


def test_openpgp_data_key_lives_as_long_as_a_pw_status(tmp_path):
    """OpenPGP card 3.4 §4.3, §7.2.2: PW1 81 for one signature when C4 says so, PW1 82 and PW3 until reset."""
    _pgp_with_keys(tmp_path / "card")
    card, tx = pgp_card(tmp_path / "card")

    def session():
        s = card.session
        assert s is not None and not s.closed
        return s

    assert pgp_verify(tx, 0x83, PW3.encode()) == 0x9000
    tx.ok("00DA00C40100")                                     # C4: PW1 valid for one signature
    tx.ok("0020FF83")
    assert card.session is None                                # VERIFY P1=FF: nothing verified any more
    assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000
    s = session()
    assert pgp_sign(tx)[1] == 0x9000
    assert s.closed and card.session is None and card.state.keys[_KEY.SIG]._clear is None   # one signature
    assert pgp_sign(tx)[1] == 0x6982
    assert pgp_verify(tx, 0x82, PW1.encode()) == 0x9000
    s = session()
    for _ in range(3):                                         # PW1 82 stays until reset
        assert tx(apdu(0, 0x88, 0, 0, os.urandom(32), le=256))[1] == 0x9000
    assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000 and card.session is s      # one data key per card
    assert pgp_verify(tx, 0x82, b"wrong-pin") == 0x63C2
    assert card.session is s                                   # PW1 81 still verified: the key stays
    assert pgp_sign(tx)[1] == 0x9000 and s.closed              # ... until its one signature
    assert pgp_verify(tx, 0x83, PW3.encode()) == 0x9000
    s = session()
    assert "dek" not in repr(s) and repr(s._dek).startswith("SecretBytes(32 bytes")
    card.reset()
    assert card.session is None and s._dek.wiped
    tx.ok("00A4040006D27600012401")
    assert pgp_verify(tx, 0x82, PW1.encode()) == 0x9000
    s = session()
    asyncio.run(_power_off(card))
    assert s.closed and card.session is None
    card.insert()
    asyncio.run(_power_on(card))
    tx.ok("00A4040006D27600012401")
    assert pgp_verify(tx, 0x83, PW3.encode()) == 0x9000
    s = session()
    card.remove()
    asyncio.run(_drain(card))
    assert s.closed and card.session is None


def test_openpgp_pw_changes_rewrap_only_the_data_key(tmp_path):
    _pgp_with_keys(tmp_path / "card")
    path = tmp_path / "card" / "state.json"
    card, tx = pgp_card(tmp_path / "card")

    def changed(before: dict) -> set[str]:
        after = json.loads(path.read_text())
        return {k for k in set(before) | set(after) if before.get(k) != after.get(k)} - {"mac"}

    before = json.loads(path.read_text())
    tx.ok(apdu(0, 0x24, 0, 0x81, PW1.encode() + b"11112222"))          # CHANGE REFERENCE DATA PW1
    assert changed(before) == {"pw1"} and card.session is None
    after = json.loads(path.read_text())
    assert after["pw1"]["salt"] != before["pw1"]["salt"] and after["pw1"]["wrap"] != before["pw1"]["wrap"]
    before = after
    tx.ok(apdu(0, 0x24, 0, 0x83, PW3.encode() + b"new-admin-pw"))      # ... PW3
    assert changed(before) == {"pw3"}
    before = json.loads(path.read_text())
    for _ in range(3):
        pgp_verify(tx, 0x81, b"wrong-pin")
    assert pgp_verify(tx, 0x81, b"11112222") == 0x6983
    before = json.loads(path.read_text())
    tx.ok(apdu(0, 0x2C, 0, 0x81, RC.encode() + b"33334444"))          # RESET RETRY COUNTER, resetting code
    assert changed(before) == {"pw1"} and card.session is None          # the RC verifies no PW
    assert pgp_verify(tx, 0x83, b"new-admin-pw") == 0x9000
    before = json.loads(path.read_text())
    tx.ok(apdu(0, 0x2C, 2, 0x81, b"55556666"))                        # RESET RETRY COUNTER after PW3
    assert changed(before) == {"pw1"}
    before = json.loads(path.read_text())
    tx.ok(apdu(0, 0xDA, 0, 0xD3, b"another-rc"))                     # a new resetting code
    assert changed(before) == {"rc"}
    again, tx2 = pgp_card(tmp_path / "card")
    assert pgp_verify(tx2, 0x81, b"55556666") == 0x9000 and pgp_sign(tx2)[1] == 0x9000
    tx2.ok(apdu(0, 0x2C, 0, 0x81, b"another-rc" + b"77778888"))
    assert pgp_verify(tx2, 0x82, b"77778888") == 0x9000
    assert tx2(apdu(0, 0x88, 0, 0, os.urandom(32), le=256))[1] == 0x9000


def test_openpgp_keys_carry_their_identity(tmp_path):
    """Without a device secret the MAC can be forged; the associated data still catches a key whose
    fingerprint, attributes or origin were changed in the file, or that was moved to another slot."""
    _pgp_with_keys(tmp_path / "card")
    path = tmp_path / "card" / "state.json"
    original = path.read_text()

    def forged(fn):
        path.write_text(original)
        doc = json.loads(original)
        fn(doc)
        doc["mac"] = vault.document_mac(DeviceSecret(), doc)
        path.write_text(json.dumps(doc))
        card, tx = pgp_card(tmp_path / "card")
        assert pgp_verify(tx, 0x81, PW1.encode()) == 0x9000
        return pgp_sign(tx)[1]

    b64 = lambda data: base64.b64encode(data).decode()       # noqa: E731
    assert forged(lambda d: None) == 0x9000
    assert forged(lambda d: d["fingerprints"].__setitem__("SIG", b64(bytes(range(1, 21))))) == 0x6581
    assert forged(lambda d: d["keys"]["SIG"].__setitem__("status", "IMPORTED")) == 0x6581
    # Ed25519 from the AUT slot's P-256 attributes would not load; give SIG the AUT key's record and attributes
    assert forged(lambda d: (d["keys"].__setitem__("SIG", d["keys"]["AUT"]),
                             d["attributes"].__setitem__("SIG", b64(bytes.fromhex(P256_ECDSA_ATTR))),
                             d["fingerprints"].pop("SIG"))) == 0x6581
    path.write_text(original)
    doc = json.loads(original)
    doc["keys"]["SIG"]["sealed"] = {"by": "device", "nonce": doc["keys"]["SIG"]["sealed"]["nonce"],
                                    "ct": doc["keys"]["SIG"]["sealed"]["ct"]}
    doc["mac"] = vault.document_mac(DeviceSecret(), doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(StorageError, match="not sealed to the card key"):
        OpenPgpCard.open(CardStore(tmp_path / "card"))
    path.write_text(original)
    _edit(path, lambda d: d["pw1"].__setitem__("tries_left", 1))
    with pytest.raises(IntegrityError, match="the MAC does not match"):
        OpenPgpCard.open(CardStore(tmp_path / "card"))


def test_openpgp_terminate_and_activate_make_a_new_vault(tmp_path):
    _pgp_with_keys(tmp_path / "card")
    card, tx = pgp_card(tmp_path / "card")
    uid = card.state.vault.uid
    assert pgp_verify(tx, 0x83, PW3.encode()) == 0x9000
    tx.ok("00E60000")
    assert card.session is None
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc["terminated"] and doc["keys"] == {} and doc["rc"] is None
    assert base64.b64decode(doc["vault"]["uid"]) != uid
    tx.ok("00440000")
    doc2 = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc2["vault"]["uid"] not in (doc["vault"]["uid"], base64.b64encode(uid).decode())
    tx.ok("00A4040006D27600012401")
    assert pgp_verify(tx, 0x83, b"12345678") == 0x9000 and pgp_verify(tx, 0x81, b"123456") == 0x9000


def test_openpgp_kdf_cost_and_device_secret_from_the_configuration(tmp_path, capsys):
    from ccidgadget.cli_card import main_card
    from ccidgadget.engines import CardContext, build_card
    from ccidgadget.options import SlotSpec
    options = VaultOptions(kdf=vault.KdfParams(2 ** 10, 1, 1))
    card = build_card(SlotSpec(type="openpgp"), CardContext(slot=0, state_dir=tmp_path / "daemon", vault=options))
    doc = json.loads((card.store.path).read_text())
    assert doc["pw1"]["kdf"] == doc["pw3"]["kdf"] == {"name": "scrypt", "n": 1024, "r": 1, "p": 1}
    card.reset()
    tx = Tx(card)
    tx.ok("00A4040006D27600012401")
    assert pgp_verify(tx, 0x83, b"12345678") == 0x9000
    tx.ok(apdu(0, 0xDA, 0, 0xD3, RC.encode()))
    tx.ok(apdu(0, 0x24, 0, 0x81, b"123456" + PW1.encode()))
    doc = json.loads((card.store.path).read_text())
    assert doc["rc"]["kdf"]["n"] == doc["pw1"]["kdf"]["n"] == 1024
    # the offline tools: --config names the device secret, --kdf-log2-n the cost
    secret = tmp_path / "device.key"
    assert main_card(["new-device-secret", "--file", str(secret)]) == 0
    conf = tmp_path / "ccidgadget.toml"
    conf.write_text(f'[vault]\ndevice_secret = "file"\ndevice_secret_path = "{secret}"\nkdf_log2_n = 11\n')
    d = tmp_path / "pgp"
    assert main_card(["create", "--type", "openpgp", "--dir", str(d), "--config", str(conf)]) == 0
    doc = json.loads((d / "state.json").read_text())
    assert doc["vault"]["device"]["kind"] == "file" and doc["pw1"]["kdf"]["n"] == 2048
    assert main_card(["show", "--dir", str(d)]) == 1                      # no configuration: refused
    assert "bound to device secret 'file'" in capsys.readouterr().err
    assert main_card(["generate", "--dir", str(d), "--config", str(conf), "--slot", "sig",
                      "--algorithm", "ed25519"]) == 0
    assert main_card(["change-pin", "--dir", str(d), "--config", str(conf), "--old", "123456",
                      "--new", "909090", "--kdf-log2-n", "10"]) == 0
    assert json.loads((d / "state.json").read_text())["pw1"]["kdf"]["n"] == 1024
    assert main_card(["show", "--dir", str(d), "--config", str(conf), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"device_secret": "file"' in out and "909090" not in out
    assert main_card(["reset", "--dir", str(d)]) == 1
    options = VaultOptions(device_secret="file", device_secret_path=str(secret))
    card, tx = pgp_card(d, options)
    assert pgp_verify(tx, 0x81, b"909090") == 0x9000 and pgp_sign(tx)[1] == 0x9000
    assert main_card(["reset", "--dir", str(d), "--config", str(conf)]) == 0


# -- converting an OpenPGP state without a vault ----------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["main-verifiers", "format-1-hashes"])
def test_openpgp_state_without_a_vault_is_converted_on_open(tmp_path, caplog, legacy):
    made = v1_states.openpgp_unvaulted(tmp_path / "card", legacy=legacy)
    card, tx = pgp_card(tmp_path / "card")
    assert "converted from format 1" in caplog.text
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert doc["version"] == 2 and "mac" in doc and sorted(p.name for p in (tmp_path / "card").iterdir()) == [
        "state.json"]
    secrets = {"0103": made["dos"]["0103"], "0104": made["dos"]["0104"]}
    for slot, key in made["keys"].items():
        secrets.update({f"{slot} {k}": v for k, v in key_needles(key).items()})
    assert leaks(tmp_path / "card", secrets) == []
    # everything else as it was
    assert doc["signature_counter"] == 7 and doc["serial"] == 0x0BADCAFE and doc["private_dos"] == {
        "0101": base64.b64encode(b"public one").decode(), "0102": base64.b64encode(b"public two").decode()}
    assert tx.ok("00CA00C500") == b"".join(made["fingerprints"][k] for k in ("SIG", "DEC", "AUT"))
    assert tx.ok("00CA00C400")[4:] == b"\x03\x03\x03"
    # format 1 records had scrypt's output: wrapped at once.  main's verifiers: at each PW's first VERIFY,
    # until then the data key is also sealed to the device key (and the log says so)
    pending = ["pw1", "pw3", "rc"] if not legacy else []
    assert [p for p in ("pw1", "pw3", "rc") if "wrap" not in doc[p]] == pending
    assert ("interim_data_key" in doc) == (not legacy)
    assert pgp_verify(tx, 0x81, b"wrong-pin") == 0x63C2
    assert pgp_verify(tx, 0x81, v1_states.PW1.encode()) == 0x9000
    made["keys"]["SIG"].public_key().verify(pgp_sign(tx, b"m")[0], hashlib.sha256(b"m").digest())
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert "wrap" in doc["pw1"] and doc["pw1"]["tries_left"] == 3
    assert ("interim_data_key" in doc) == (not legacy)
    assert pgp_verify(tx, 0x82, v1_states.PW1.encode()) == 0x9000
    assert tx.ok("00CA010300") == made["dos"]["0103"]
    peer = x25519.X25519PrivateKey.generate()
    point = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = tx.ok(apdu(0, 0x2A, 0x80, 0x86, T(0xA6, T(0x7F49, T(0x86, point))), le=256))
    assert shared == peer.exchange(made["keys"]["DEC"].public_key())
    card.reset()
    tx.ok("00A4040006D27600012401")
    assert pgp_verify(tx, 0x83, v1_states.PW3.encode()) == 0x9000
    assert tx.ok("00CA010400") == made["dos"]["0104"]
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert ("interim_data_key" in doc) == (not legacy)                 # the resetting code is still to come
    for _ in range(3):
        pgp_verify(tx, 0x81, b"wrong-pin")
    tx.ok(apdu(0, 0x2C, 0, 0x81, v1_states.RC.encode() + b"24242424"))
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    assert "interim_data_key" not in doc and all("wrap" in doc[p] for p in ("pw1", "pw3", "rc"))
    again, tx2 = pgp_card(tmp_path / "card")
    assert pgp_verify(tx2, 0x82, b"24242424") == 0x9000
    rsa_sig = tx2.ok(apdu(0, 0x88, 0, 0, DIGEST_INFO + hashlib.sha256(b"a").digest(), le=256))
    made["keys"]["AUT"].public_key().verify(rsa_sig, b"a", padding.PKCS1v15(), hashes.SHA256())


def test_openpgp_conversion_with_a_device_secret_and_offline_pin_change(tmp_path):
    secret_file = tmp_path / "secret"
    create_file_secret(secret_file)
    options = VaultOptions(device_secret="file", device_secret_path=str(secret_file))
    made = v1_states.openpgp_unvaulted(tmp_path / "card")
    info = pgp_provision.show_card(tmp_path / "card", options)            # the offline tools convert too
    assert info["device_secret"] == "file" and info["conversion_pending"] == ["pw1", "pw3", "rc"]
    pgp_provision.change_pin(tmp_path / "card", v1_states.PW1, "864200", options=options)
    pgp_provision.change_pin(tmp_path / "card", v1_states.PW3, "admin-864200", which="pw3", options=options)
    assert pgp_provision.show_card(tmp_path / "card", options)["conversion_pending"] == ["rc"]
    with pytest.raises(StorageError, match="bound to device secret 'file'"):
        OpenPgpCard.open(CardStore(tmp_path / "card"))
    card, tx = pgp_card(tmp_path / "card", options)
    doc = json.loads((tmp_path / "card" / "state.json").read_text())
    no_secret = pin.PinSlot.from_dict(doc["pw1"], aad=card.state.vault.aad("openpgp/pw1"))
    with pytest.raises(pin.ApduError):
        no_secret.verify(b"864200", lambda: None)                  # the new wrap mixes the device secret in
    assert pgp_verify(tx, 0x83, b"admin-864200") == 0x9000
    tx.ok(apdu(0, 0xDA, 0, 0xD3, b"new-reset-code"))               # replacing the RC completes the conversion
    assert "interim_data_key" not in json.loads((tmp_path / "card" / "state.json").read_text())
    assert pgp_verify(tx, 0x81, b"864200") == 0x9000
    made["keys"]["SIG"].public_key().verify(pgp_sign(tx, b"z")[0], hashlib.sha256(b"z").digest())


def test_openpgp_conversion_backup_only_when_asked(tmp_path):
    v1_states.openpgp_unvaulted(tmp_path / "a")
    OpenPgpCard.open(CardStore(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["state.json"]
    v1_states.openpgp_unvaulted(tmp_path / "b")
    original = (tmp_path / "b" / "state.json").read_bytes()
    OpenPgpCard.open(CardStore(tmp_path / "b"), options=VaultOptions(migration_backup=True))
    assert (tmp_path / "b" / "state.json.v1.bak").read_bytes() == original


def test_kill_9_during_openpgp_conversion_leaves_old_or_new(tmp_path):
    """A child process converts OpenPGP states without a vault and is SIGKILLed at random moments."""
    def check(d: Path, made: dict) -> None:
        card, tx = pgp_card(d)
        assert pgp_verify(tx, 0x81, v1_states.PW1.encode()) == 0x9000
        made["keys"]["SIG"].public_key().verify(pgp_sign(tx, b"k")[0], hashlib.sha256(b"k").digest())

    outcomes = kill_9_while_opening(tmp_path, "ccidgadget.cards.openpgp:OpenPgpCard", v1_states.openpgp_unvaulted,
                                    check, 10)
    print("kill -9 during the OpenPGP conversion:", outcomes)
