"""PIV data objects: the defaults a fresh card carries, certificate containers, attestation.

Encodings follow SP 800-73-4 Part 1: CHUID §3.1.2 (tags 30 FASC-N, 34 GUID,
35 expiration, 3E signature, FE LRC), CCC §3.1.1, Discovery Object §3.3.2,
Key History §3.3.3, certificate containers Appendix A (70 cert, 71 CertInfo,
FE LRC).  The FASC-N is the one yubico-piv-tool puts in its CHUID template
(agency 9999, "non-federal"), the GUID is random per card.
"""

from __future__ import annotations

import datetime
import gzip
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ...cryptocompat import not_valid_after
from ..iso7816 import SW, ApduError
from ..keys import CardKey
from ..tlv import parse_dict, tlv
from .constants import (FIRMWARE_VERSION, PIV_AID, TAG_CERT_INFO, TAG_CERTIFICATE, TAG_ERROR_DETECTION,
                        PIN_POLICY, TOUCH_POLICY)

FASC_N_NON_FEDERAL = bytes.fromhex("d4e739da739ced39ce739d836858210842108421c84210c3eb")
#: GSC-IS RID + dummy manufacturer id, as in yubico-piv-tool's CCC template.
CCC_CARD_ID_PREFIX = bytes.fromhex("a000000116ff02")

# Yubico attestation extensions (developers.yubico.com/PIV/Introduction/PIV_attestation.html)
OID_FIRMWARE_VERSION = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.3")
OID_SERIAL_NUMBER = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.7")
OID_PIN_TOUCH_POLICY = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.8")
OID_FORM_FACTOR = x509.ObjectIdentifier("1.3.6.1.4.1.41482.3.9")
FORM_FACTOR_UNKNOWN = 0x00

ATTESTATION_CA_NAME = "ccidgadget attestation"


def make_chuid(guid: bytes, expires: datetime.date) -> bytes:
    return (tlv(0x30, FASC_N_NON_FEDERAL) + tlv(0x34, guid)
            + tlv(0x35, expires.strftime("%Y%m%d").encode()) + tlv(0x3E) + tlv(TAG_ERROR_DETECTION))


def make_ccc(card_id: bytes) -> bytes:
    return (tlv(0xF0, CCC_CARD_ID_PREFIX + card_id) + tlv(0xF1, b"\x21") + tlv(0xF2, b"\x21") + tlv(0xF3)
            + tlv(0xF4, b"\x00") + tlv(0xF5, b"\x10") + tlv(0xF6) + tlv(0xF7) + tlv(0xFA) + tlv(0xFB)
            + tlv(0xFC) + tlv(0xFD) + tlv(TAG_ERROR_DETECTION))


def make_discovery() -> bytes:
    """Discovery Object content (inside tag 7E): the AID and PIN usage policy 40 00 (PIV PIN only)."""
    return tlv(0x4F, PIV_AID) + tlv(0x5F2F, b"\x40\x00")


def make_key_history(on_card: int) -> bytes:
    """Key History content: C1 keys with on-card certificates, C2 off-card (none)."""
    return tlv(0xC1, bytes([on_card])) + tlv(0xC2, b"\x00") + tlv(TAG_ERROR_DETECTION)


def make_certificate_object(cert_der: bytes, compressed: bool = False) -> bytes:
    if compressed:
        return tlv(TAG_CERTIFICATE, gzip.compress(cert_der)) + tlv(TAG_CERT_INFO, b"\x01") + tlv(TAG_ERROR_DETECTION)
    return tlv(TAG_CERTIFICATE, cert_der) + tlv(TAG_CERT_INFO, b"\x00") + tlv(TAG_ERROR_DETECTION)


def parse_certificate_object(content: bytes) -> x509.Certificate | None:
    """The certificate in a container, or None if absent/unparseable (for `card show`)."""
    try:
        items = parse_dict(content)
        der = items[TAG_CERTIFICATE]
        if items.get(TAG_CERT_INFO, b"\x00")[:1] == b"\x01":
            der = gzip.decompress(der)
        return x509.load_der_x509_certificate(der)
    except (ApduError, KeyError, ValueError, OSError, EOFError):
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _hash_for(key: CardKey):
    return None if key.algorithm.name == "ED25519" else hashes.SHA256()


def make_attestation_ca(key: CardKey, serial: int) -> x509.Certificate:
    """Self-signed certificate of the board's attestation key (slot F9)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ATTESTATION_CA_NAME),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    now = _now()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365 * 30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key), critical=False)
            .sign(key.private_key, _hash_for(key)))


def make_attestation(attestation_key: CardKey, attestation_cert: x509.Certificate, slot: int,
                     public_key, serial: int, pin_policy: PIN_POLICY, touch_policy: TOUCH_POLICY,
                     version: tuple[int, int, int] = FIRMWARE_VERSION) -> x509.Certificate:
    """An attestation certificate for the key in `slot`, signed by the F9 key.

    Like a YubiKey's: subject "CN=YubiKey PIV Attestation <slot>" (kept so
    tools that parse it recognise it), issuer = the F9 certificate's subject,
    and Yubico's extensions 1.3.6.1.4.1.41482.3.3 (firmware version, 3 bytes),
    .3.7 (serial, INTEGER), .3.8 (PIN policy, touch policy), .3.9 (form factor).
    """
    now = _now()
    not_after = not_valid_after(attestation_cert)
    serial_der = _der_integer(serial)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           f"YubiKey PIV Attestation {slot:02x}")]))
               .issuer_name(attestation_cert.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
               .add_extension(x509.UnrecognizedExtension(OID_FIRMWARE_VERSION, bytes(version)), critical=False)
               .add_extension(x509.UnrecognizedExtension(OID_SERIAL_NUMBER, serial_der), critical=False)
               .add_extension(x509.UnrecognizedExtension(OID_PIN_TOUCH_POLICY,
                                                         bytes([int(pin_policy), int(touch_policy)])), critical=False)
               .add_extension(x509.UnrecognizedExtension(OID_FORM_FACTOR, bytes([FORM_FACTOR_UNKNOWN])),
                              critical=False))
    return builder.sign(attestation_key.private_key, _hash_for(attestation_key))


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return tlv(0x02, body)


def self_signed_certificate(key: CardKey, subject: x509.Name, days: int = 365) -> x509.Certificate:
    """A self-signed certificate for a slot key (`card generate` without --csr).

    X25519 keys cannot sign; callers must not ask for them."""
    now = _now()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key.private_key, _hash_for(key)))


def certificate_request(key: CardKey, subject: x509.Name) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key.private_key, _hash_for(key))


def new_guid() -> bytes:
    return secrets.token_bytes(16)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


__all__ = ["make_chuid", "make_ccc", "make_discovery", "make_key_history", "make_certificate_object",
           "parse_certificate_object", "make_attestation_ca", "make_attestation", "self_signed_certificate",
           "certificate_request", "new_guid", "SW"]
