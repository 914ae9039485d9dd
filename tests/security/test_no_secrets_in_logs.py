# SPDX-License-Identifier: GPL-3.0-or-later
"""No secret reaches a log, at any level, or the terminal.

Everything runs with the root logger and every ccidgadget logger at DEBUG,
through a handler that keeps each record's message, exception text and extra
fields.  The secrets (PINs, PUKs, management keys, private key bytes of
imported and generated keys, a PKCS#12 password) are looked for raw, FF-padded,
in hex (upper and lower case, with and without spaces) and in base64.

Covered: a PIV card driven over CCID through the reader service (VERIFY right
and wrong, CHANGE REFERENCE DATA, RESET RETRY COUNTER, management-key
authentication, SET MANAGEMENT KEY, IMPORT, GENERATE, a failed save); a CAC
card (VERIFY, a PIN set from the configuration); the provisioning CLI
(`ccidgadget card create / import / change-pin`, values as options and on
standard input, wrong values); and the configuration loader and
`ccidgadget check-config` given a file with a PIN in it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ccidgadget import cli
from ccidgadget.cards import pin as pin_module
from ccidgadget.cards.cac import CacCard
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.storage import CardStore, StorageError
from ccidgadget.cards.tlv import tlv
from ccidgadget.daemon import config
from ccidgadget.daemon.service import ReaderService

from .support import Client, block

PIN, PUK, NEW_PIN, NEW_PUK = "24681357", "97531864", "13572468", "86420975"
CAC_PIN = "70605040"
MGMT = bytes.fromhex("5b1e3a9c07d2f4e6a8c0b2d4f6e8a0c2b4d6f8e0a2c4e6f8")          # 3DES, not the default
NEW_MGMT = bytes.fromhex("c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2")   # AES-256
P12_PASSWORD = "pkcs12-pass-Zq8"


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())
        if record.exc_info:
            self.texts.append(logging.Formatter().formatException(record.exc_info))
        self.texts.append(repr({k: v for k, v in record.__dict__.items() if k not in ("msg", "args", "exc_info")}))
        self.texts.append(repr(record.args))


@pytest.fixture
def logs(caplog):
    handler = Everything()
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    levels = {}
    for name in ["ccidgadget"] + [n for n in logging.root.manager.loggerDict if n.startswith("ccidgadget")]:
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def forms(secret: bytes | str) -> set[str]:
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    variants = {raw}
    if isinstance(secret, str) and len(raw) <= 8:
        variants.add(block(secret))
    out = set()
    for v in variants:
        out |= {v.hex(), v.hex().upper(), " ".join(f"{b:02x}" for b in v), " ".join(f"{b:02X}" for b in v),
                base64.b64encode(v).decode().rstrip("="), base64.urlsafe_b64encode(v).decode().rstrip("="),
                repr(v)[2:-1]}
        try:
            out.add(v.decode("ascii"))
        except UnicodeDecodeError:
            pass
    return out


def private_forms(key) -> set[str]:
    """Private key bytes: the raw secret and every line of its PKCS#8 PEM body."""
    out = set()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        out |= forms(key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big"))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    out |= {line for line in pem.splitlines() if line and not line.startswith("-----")}
    return out


def assert_clean(texts: list[str], secrets: dict[str, set[str]]) -> None:
    haystack = "\n".join(texts)
    assert haystack.strip(), "nothing was logged: the test would prove nothing"
    leaks = [(name, form) for name, fs in secrets.items() for form in fs if form and form in haystack]
    assert not leaks, f"secrets in the logs: {leaks}"


# -- PIV over CCID through the reader service --------------------------------------------------------
class Transport:
    def __init__(self, service) -> None:
        self.service = service
        self.bulk: list[bytes] = []
        self.arrived = asyncio.Event()

    def send_bulk_in(self, data) -> None:
        self.bulk.append(bytes(data))
        self.arrived.set()

    def interrupt_pending(self) -> None:
        while self.service.pop_interrupt() is not None:
            pass

    async def exchange(self, message_type: int, seq: int, data: bytes = b"", level: int = 0) -> tuple[int, bytes]:
        self.service.bulk_out(struct.pack("<BIBBBBB", message_type, len(data), 0, seq, 0, level & 0xFF, level >> 8)
                              + data, transfer_end=True)
        while True:
            while not self.bulk:
                self.arrived.clear()
                await asyncio.wait_for(self.arrived.wait(), 30)
            raw = self.bulk.pop(0)
            if raw[7] & 0xC0 != 0x80:
                return raw[9], raw[10:]


async def piv_session(card: PivCard) -> dict[str, set[str]]:
    service = ReaderService([card])
    t = Transport(service)
    await service.start()
    service.attach(t)
    await t.exchange(0x62, 0)
    seq = [1]

    async def xfr(apdu: bytes) -> bytes:
        seq[0] = (seq[0] + 1) & 0xFF
        chain, data = await t.exchange(0x6F, seq[0], apdu)
        while chain in (0x01, 0x03):
            chain, more = await t.exchange(0x6F, seq[0], b"", 0x10)
            data += more
        return data

    # The client is synchronous; run each APDU on the loop from a worker thread.
    loop = asyncio.get_running_loop()

    def send(apdu: bytes) -> bytes:
        return asyncio.run_coroutine_threadsafe(xfr(apdu), loop).result(60)

    def session() -> dict[str, set[str]]:
        c = Client(send)
        assert c.select_piv() == 0x9000
        assert c.send(0x20, 0x00, 0x80, block("00000000"))[1] == 0x63C2
        assert c.send(0x20, 0x00, 0x80, block(PIN))[1] == 0x9000
        assert c.send(0x24, 0x00, 0x80, block(PIN) + block(NEW_PIN))[1] == 0x9000
        assert c.send(0x24, 0x00, 0x81, block(PUK) + block(NEW_PUK))[1] == 0x9000
        assert c.send(0x2C, 0x00, 0x80, block(NEW_PUK) + block(PIN))[1] == 0x9000
        assert c.send(0x2C, 0x00, 0x80, block("99999999") + block(PIN))[1] == 0x63C2
        assert c.authenticate(bytes(24), 0x03) == 0x6982                     # wrong key
        assert c.authenticate(MGMT, 0x03) == 0x9000
        imported = ec.generate_private_key(ec.SECP256R1())
        scalar = imported.private_numbers().private_value.to_bytes(32, "big")
        assert c.send(0xFE, 0x11, 0x9A, tlv(0x06, scalar))[1] == 0x9000      # IMPORT
        assert c.send(0x47, 0x00, 0x9C, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x9000   # GENERATE
        generated = card.state.keys[0x9C].key.private_key
        assert c.send(0xFF, 0xFF, 0xFF, b"\x0C" + tlv(0x9B, NEW_MGMT))[1] == 0x9000   # SET MANAGEMENT KEY
        assert c.authenticate(NEW_MGMT, 0x0C) == 0x9000
        # A save that fails (full disk) while a PIN and a key are being handled.
        real = card.store.save
        card.store.save = lambda state: (_ for _ in ()).throw(StorageError("no space left on the device"))
        assert c.send(0x20, 0x00, 0x80, block(PIN))[1] == 0x6581
        assert c.send(0xFE, 0x11, 0x9D, tlv(0x06, scalar))[1] == 0x6581
        card.store.save = real
        return {"imported key": private_forms(imported), "generated key": private_forms(generated)}

    try:
        return await loop.run_in_executor(None, session)
    finally:
        await service.stop()


def test_piv_through_the_reader_at_debug(tmp_path, logs):
    card = PivCard.create(CardStore(tmp_path / "piv"), pin=PIN, puk=PUK, mgmt_key=MGMT, mgmt_alg=0x03)
    keys = asyncio.run(piv_session(card))
    reopened = PivCard.open(card.store)          # loading logs too
    assert reopened.state.management.key == NEW_MGMT
    assert_clean(logs.texts, {"PIN": forms(PIN), "PUK": forms(PUK), "new PIN": forms(NEW_PIN),
                              "new PUK": forms(NEW_PUK), "management key": forms(MGMT),
                              "new management key": forms(NEW_MGMT), **keys})


def test_cac_at_debug(tmp_path, logs, cac_credentials):
    from ccidgadget.cards.pin import PinSlot
    card = CacCard(cac_credentials, PinSlot.new(CAC_PIN.encode(), max_tries=3), card_id=bytes(range(14)),
                   store=CardStore(tmp_path / "cac"))
    card.save()
    card.reset()
    c = Client(card.process_apdu)
    assert c.send(0x20, 0x00, 0x00, b"00000000")[1] == 0x63C2
    assert c.send(0x20, 0x00, 0x00, CAC_PIN.encode())[1] == 0x9000
    logging.getLogger("ccidgadget.cards.cac").info("marker: CAC session done")
    assert_clean(logs.texts, {"CAC PIN": forms(CAC_PIN),
                              **{f"CAC key {i}": private_forms(cr.key.private_key)
                                 for i, cr in enumerate(cac_credentials)}})


def test_cac_pin_from_configuration_at_debug(tmp_path, logs, cac_credentials):
    files = []
    for i, cr in enumerate(cac_credentials):
        p = tmp_path / f"c{i}.pem"
        p.write_bytes(cr.key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption())
                      + cr.certificate.public_bytes(serialization.Encoding.PEM))
        files.append(str(p))
    CacCard.from_sources(tmp_path / "state", certs=files)
    CacCard.from_sources(tmp_path / "state", certs=files, pin=CAC_PIN)      # "PIN set from the configuration"
    assert_clean(logs.texts, {"CAC PIN": forms(CAC_PIN)})


# -- the provisioning CLI ----------------------------------------------------------------------------
def test_card_cli_at_debug(tmp_path, logs, capsys, monkeypatch):
    d = str(tmp_path / "card")
    assert cli.main(["card", "create", "--dir", d, "--pin", PIN, "--puk", PUK, "--mgmt-key", NEW_MGMT.hex(),
                     "--mgmt-alg", "aes256"]) == 0
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(P12_PASSWORD.encode()))
    (tmp_path / "key.pem").write_bytes(pem)
    assert cli.main(["card", "import", "--dir", d, "--slot", "9a", str(tmp_path / "key.pem"),
                     "--password", P12_PASSWORD]) == 0
    assert cli.main(["card", "import", "--dir", d, "--slot", "9c", str(tmp_path / "key.pem"),
                     "--password", P12_PASSWORD + "x"]) == 1                      # wrong password
    assert cli.main(["card", "change-pin", "--dir", d, "--old", "00000000", "--new", NEW_PIN]) == 1
    assert cli.main(["card", "change-pin", "--dir", d, "--old", PIN, "--new", NEW_PIN]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PUK}\n{NEW_PUK}\n"))
    assert cli.main(["card", "change-pin", "--dir", d, "--puk"]) == 0
    assert cli.main(["card", "change-pin", "--dir", d, "--old", NEW_PIN, "--new", "12"]) == 1   # too short
    assert cli.main(["card", "show", "--dir", d]) == 0
    out = capsys.readouterr()
    assert "imported" in out.out
    assert_clean(logs.texts + [out.out, out.err],
                 {"PIN": forms(PIN), "PUK": forms(PUK), "new PIN": forms(NEW_PIN), "new PUK": forms(NEW_PUK),
                  "management key": forms(NEW_MGMT), "key password": forms(P12_PASSWORD),
                  "imported key": private_forms(key)})


# -- the configuration -------------------------------------------------------------------------------
def test_config_with_a_pin_at_debug(tmp_path, logs, capsys):
    text = (f'[daemon]\nlog_level = "debug"\n[[slot]]\nengine = "emulated"\ntype = "cac"\npin = "{PIN}"\n'
            f'db = "{NEW_PIN}"\n[[slot]]\nengine = "emulated"\nname = "x"\ninserted = "{PUK}"\n')
    path = tmp_path / "ccidgadget.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, source=str(path))
    assert "pin: unknown key" in str(e.value)
    assert cli.main(["check-config", "--config", str(path)]) == 2
    logging.getLogger("ccidgadget.daemon").debug("marker: configuration checked")
    out = capsys.readouterr()
    assert_clean(logs.texts + [out.out, out.err], {"PIN": forms(PIN)})


# -- the OpenPGP card --------------------------------------------------------------------------------
def test_openpgp_at_debug(tmp_path, logs):
    from ccidgadget.cards.openpgp import OpenPgpCard

    pw1, pw3, new_pw1, rc = "31415926", "27182818-admin", "16180339", "rc-14142135"
    card = OpenPgpCard.create(CardStore(tmp_path / "pgp"), pw1=pw1, pw3=pw3)
    card.reset()

    def tx(apdu: bytes) -> int:
        r = card.process_apdu(apdu)
        return int.from_bytes(r[-2:], "big")

    def cmd(ins, p1, p2, data=b""):
        return bytes((0x00, ins, p1, p2, len(data))) + data

    assert tx(bytes.fromhex("00A4040006D27600012401")) == 0x9000
    assert tx(cmd(0x20, 0x00, 0x81, b"000000")) == 0x63C2
    assert tx(cmd(0x20, 0x00, 0x83, pw3.encode())) == 0x9000
    assert tx(cmd(0x24, 0x00, 0x81, pw1.encode() + new_pw1.encode())) == 0x9000
    assert tx(cmd(0xDA, 0x00, 0xD3, rc.encode())) == 0x9000
    assert tx(cmd(0x2C, 0x00, 0x81, rc.encode() + pw1.encode())) == 0x9000
    assert tx(cmd(0xDA, 0x00, 0xC1, bytes.fromhex("132A8648CE3D030107"))) == 0x9000
    imported = ec.generate_private_key(ec.SECP256R1())
    scalar = imported.private_numbers().private_value.to_bytes(32, "big")
    body = bytes.fromhex("B600") + tlv(0x7F48, b"\x92\x20") + tlv(0x5F48, scalar)
    assert tx(cmd(0xDB, 0x3F, 0xFF, tlv(0x4D, body))) == 0x9000                    # key import
    assert tx(cmd(0xDA, 0x00, 0xC3, bytes.fromhex("132A8648CE3D030107"))) == 0x9000
    assert tx(cmd(0x47, 0x80, 0x00, bytes.fromhex("A400")) + b"\x00") == 0x9000      # generate
    generated = card.state.keys[3].key.private_key
    real = card.store.save
    card.store.save = lambda state: (_ for _ in ()).throw(StorageError("no space left on the device"))
    assert tx(cmd(0x20, 0x00, 0x82, pw1.encode())) == 0x6581
    card.store.save = real
    OpenPgpCard.open(card.store)
    assert_clean(logs.texts, {"PW1": forms(pw1), "PW3": forms(pw3), "new PW1": forms(new_pw1),
                              "resetting code": forms(rc), "imported key": private_forms(imported),
                              "generated key": private_forms(generated)})
