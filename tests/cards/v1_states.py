"""Card states in format 1 (keys in clear), written as ccidgadget before issue 13 wrote them.

The layout is docs/card-state-format.md "Format 1"; it is written here by hand, not with the
current code, so that the migration is tested against the old format itself.  Used by the unit
tests (tests/cards/test_vault.py) and the kill -9 migration test in the guest (tests/e2e).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PIN, PUK = "24681357", "86421357"
MGMT = bytes(range(0x40, 0x58))                   # 24 bytes, 3DES
CAC_PIN = "13572468"
SCRYPT = {"name": "scrypt", "n": 2 ** 4, "r": 8, "p": 1}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pin_record(value: bytes, tries: int = 3, kdf: dict = SCRYPT) -> dict:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(value)
    return {"kdf": dict(kdf), "salt": b64(salt), "hash": b64(digest), "tries_left": tries, "max_tries": tries,
            "is_default": False}


def pad(value: str) -> bytes:
    return value.encode().ljust(8, b"\xff")


def pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def self_signed(key, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))


def piv_v1(directory: Path, kdf: dict = SCRYPT) -> dict:
    """A format 1 PIV card: 9A RSA-1024 (PIN once), 9E P-256 (PIN never), F9 P-256, printed information.

    Returns {"keys": {slot: private key}, "printed": bytes} for the checks."""
    keys = {0x9A: rsa.generate_private_key(65537, 1024), 0x9E: ec.generate_private_key(ec.SECP256R1()),
            0xF9: ec.generate_private_key(ec.SECP256R1())}
    policies = {0x9A: "ONCE", 0x9E: "NEVER", 0xF9: "NEVER"}
    printed = b"\x88\x1a\x89\x18" + MGMT                 # as ykman stores a PIN-protected management key
    doc = {"format": "ccidgadget-card", "version": 1, "type": "piv", "created": "2025-01-01T00:00:00+00:00",
           "serial": 12345678, "pin": pin_record(pad(PIN), kdf=kdf), "puk": pin_record(pad(PUK), kdf=kdf),
           "management_key": {"algorithm": "TDES", "key": b64(MGMT), "touch_policy": "NEVER"},
           "keys": {f"{slot:02X}": {"algorithm": "RSA1024" if slot == 0x9A else "ECCP256", "pem": pem(k),
                                    "pin_policy": policies[slot], "touch_policy": "NEVER", "origin": "IMPORTED"}
                    for slot, k in keys.items()},
           "objects": {"5FC102": b64(b"\x30\x19" + bytes(25)), "5FC109": b64(printed)}}
    write(directory, doc)
    return {"keys": keys, "printed": printed}


def cac_v1(directory: Path, credentials) -> dict:
    """A format 1 CAC card from [(certificate, private key)] (keys in PEM, in clear)."""
    doc = {"format": "ccidgadget-card", "version": 1, "type": "cac", "card_id": b64(bytes(range(14))),
           "pin": pin_record(CAC_PIN.encode()),
           "credentials": [{"label": f"cert {i}", "source": f"cert{i}",
                            "cert": b64(cert.public_bytes(serialization.Encoding.DER)), "key": pem(key)}
                           for i, (cert, key) in enumerate(credentials)]}
    write(directory, doc)
    return doc


def write(directory: Path, doc: dict) -> None:
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / "state.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.chmod(path, 0o600)


# -- the OpenPGP card before keys at rest reached it ----------------------------------------------
PW1, PW3, RC = "135246", "13572468ab", "rc-97531"
#: Algorithm attributes C1-C3 (OpenPGP card 3.4 §4.4.3.10): Ed25519 EdDSA, Cv25519 ECDH, RSA-2048.
OPENPGP_ATTRIBUTES = {"SIG": "162B06010401DA470F01", "DEC": "122B060104019755010501", "AUT": "010800002000"}


def openpgp_pin_record(value: bytes, legacy: bool, kdf: dict = SCRYPT) -> dict:
    """A PW record as the OpenPGP card wrote it without a data key: format 1 ("hash" = scrypt's output), or as
    main's OpenPGP code did once PIN records had verifiers ("verifier" derived without a device secret, no
    "wrap"; that derivation is vault.pin_keys', which the conversion does not change)."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    salt = os.urandom(16)
    s = Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(value)
    record = {"kdf": dict(kdf), "salt": b64(salt), "tries_left": 3, "max_tries": 3, "is_default": False,
              "length": len(value)}
    if legacy:
        record["hash"] = b64(s)
    else:
        from ccidgadget.cards import vault
        from ccidgadget.cards.device_secret import NO_DEVICE_SECRET
        record["verifier"] = b64(vault.pin_keys(NO_DEVICE_SECRET, s)[0])
    return record


def openpgp_unvaulted(directory: Path, *, legacy: bool = False, kdf: dict = SCRYPT) -> dict:
    """An OpenPGP card state without a vault section (keys as PKCS#8 PEM, private DOs in clear), with
    Ed25519 / Cv25519 / RSA-2048 keys, fingerprints, a resetting code and the four private DOs.

    `legacy`: version 1 with format 1 PIN records; else version 2 as main's OpenPGP code wrote it.
    Returns {"keys": {slot: private key}, "fingerprints", "dos"} for the checks."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
    keys = {"SIG": ed25519.Ed25519PrivateKey.generate(), "DEC": x25519.X25519PrivateKey.generate(),
            "AUT": rsa.generate_private_key(65537, 2048)}
    fingerprints = {k: os.urandom(20) for k in keys}
    dos = {"0101": b"public one", "0102": b"public two", "0103": b"PW1 reads this", "0104": b"PW3 reads that"}
    doc = {"format": "ccidgadget-card", "version": 1 if legacy else 2, "type": "openpgp",
           "created": "2025-06-01T00:00:00+00:00", "serial": 0x0BADCAFE, "manufacturer": 0xFF00,
           "pw1": openpgp_pin_record(PW1.encode(), legacy, kdf), "pw3": openpgp_pin_record(PW3.encode(), legacy, kdf),
           "rc": openpgp_pin_record(RC.encode(), legacy, kdf), "pw1_valid_for_several": True,
           "kdf": b64(bytes.fromhex("810100")),
           "attributes": {k: b64(bytes.fromhex(v)) for k, v in OPENPGP_ATTRIBUTES.items()},
           "keys": {k: {"algorithm": {"SIG": "ED25519", "DEC": "X25519", "AUT": "RSA2048"}[k], "pem": pem(key),
                        "status": "GENERATED" if k != "DEC" else "IMPORTED"} for k, key in keys.items()},
           "fingerprints": {k: b64(v) for k, v in fingerprints.items()}, "ca_fingerprints": {},
           "generation_times": {k: 1700000000 for k in keys}, "uif": {}, "certificates": {},
           "private_dos": {t: b64(v) for t, v in dos.items()},
           "name": b64(b"Card<<User"), "language": b64(b"en"), "salutation": b64(b""), "url": b64(b""),
           "login": b64(b"user"), "signature_counter": 7, "terminated": False}
    write(directory, doc)
    return {"keys": keys, "fingerprints": fingerprints, "dos": dos}
