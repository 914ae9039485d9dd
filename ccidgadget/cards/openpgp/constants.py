# SPDX-License-Identifier: GPL-3.0-or-later
"""OpenPGP card constants, named as "Functional Specification of the OpenPGP application on ISO smart
card operating systems", version 3.4 (cited as §x.y) names them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..iso7816 import MAX_EXTENDED_LC
from ..keys import ALGORITHM

#: RID D276000124 (FSF Europe), PIX application 01 (§4.2.1); the full AID adds
#: version, manufacturer, serial number and RFU 0000.
OPENPGP_RID_APP = bytes.fromhex("D27600012401")
#: Specification version the card implements (§4.2.1, BCD in AID bytes 7-8).
VERSION = (3, 4)
#: Manufacturer IDs FF00..FFFE are for cards "with randomly created serial numbers" and no registered
#: manufacturer (§4.2.1; GnuPG shows "unmanaged S/N range").  We take the first.
MANUFACTURER = 0xFF00

DEFAULT_PW1 = "123456"
DEFAULT_PW3 = "12345678"
#: §4.3: PW1 at least 6, PW3 (and the resetting code) at least 8 characters.
PW1_MIN_LENGTH = 6
PW3_MIN_LENGTH = 8
RC_MIN_LENGTH = 8
#: Longest PW we store (C4 bytes 2-4, UTF-8 format: 7 bits of length).
PW_MAX_LENGTH = 127
DEFAULT_TRIES = 3

#: Extended capabilities (C0) limits; each is enforced where the DO is written (§4.4.3.7).
MAX_CHALLENGE_LENGTH = 1024
MAX_CERTIFICATE_LENGTH = 2048
#: Private DOs, login data, URL, KDF-DO ("special DOs").
MAX_SPECIAL_DO_LENGTH = 255
#: Extended length information 7F66 (§4.4.3.8): one extended APDU carries at most 65535 data
#: bytes each way, and the CCID core reassembles / splits APDUs that size (ccid/config.py).
MAX_COMMAND_LENGTH = MAX_EXTENDED_LC
MAX_RESPONSE_LENGTH = 0xFFFF
#: §4.4.3.2 (name 5B: up to 39 bytes), language 5F2D: 2..8 bytes.
MAX_NAME_LENGTH = 39
MAX_LANGUAGE_LENGTH = 8
#: The digital signature counter is 3 bytes (§4.4.1, 93) and stops at its maximum.
SIGNATURE_COUNTER_MAX = 0xFFFFFF


class INS(enum.IntEnum):
    """Instruction bytes (§7.1)."""

    SELECT = 0xA4
    SELECT_DATA = 0xA5
    GET_DATA = 0xCA
    GET_NEXT_DATA = 0xCC
    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    RESET_RETRY_COUNTER = 0x2C
    PUT_DATA = 0xDA
    PUT_DATA_ODD = 0xDB
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x47
    PERFORM_SECURITY_OPERATION = 0x2A
    INTERNAL_AUTHENTICATE = 0x88
    GET_RESPONSE = 0xC0
    GET_CHALLENGE = 0x84
    MANAGE_SECURITY_ENVIRONMENT = 0x22
    TERMINATE_DF = 0xE6
    ACTIVATE_FILE = 0x44


class PSO(enum.IntEnum):
    """PERFORM SECURITY OPERATION P1P2 (§7.2.10, §7.2.11, §7.2.12)."""

    COMPUTE_DIGITAL_SIGNATURE = 0x9E9A
    DECIPHER = 0x8086
    ENCIPHER = 0x8680


class PW(enum.IntEnum):
    """VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER P2 (§7.2.2)."""

    PW1_SIGN = 0x81          # PW1 for PSO:CDS
    PW1_OTHER = 0x82         # PW1 for the other commands (decipher, authenticate, private DOs)
    PW3 = 0x83


class KEY(enum.IntEnum):
    """The three key slots, numbered as the key references of MSE (§7.2.18)."""

    SIG = 1
    DEC = 2
    AUT = 3

    @property
    def crt(self) -> int:
        """Control reference template tag naming the key (§4.4.3.12)."""
        return {KEY.SIG: 0xB6, KEY.DEC: 0xB8, KEY.AUT: 0xA4}[self]

    @property
    def attributes_tag(self) -> int:
        return 0xC0 + self

    @property
    def fingerprint_tag(self) -> int:
        return 0xC6 + self

    @property
    def ca_fingerprint_tag(self) -> int:
        return 0xC9 + self

    @property
    def generation_time_tag(self) -> int:
        return 0xCD + self

    @property
    def uif_tag(self) -> int:
        return 0xD5 + self

    @classmethod
    def from_crt(cls, tag: int) -> "KEY":
        for k in cls:
            if k.crt == tag:
                return k
        raise ValueError(f"no key has CRT {tag:02X}")


#: Cardholder certificates 7F21 in SELECT DATA occurrence order: AUT, DEC, SIG (§7.2.5).
CERTIFICATE_OCCURRENCES = (KEY.AUT, KEY.DEC, KEY.SIG)


class TAG(enum.IntEnum):
    """Data objects (§4.4.1) and the tags inside command data."""

    PRIVATE_USE_1 = 0x0101
    PRIVATE_USE_2 = 0x0102
    PRIVATE_USE_3 = 0x0103
    PRIVATE_USE_4 = 0x0104
    APPLICATION_IDENTIFIER = 0x4F
    LOGIN_DATA = 0x5E
    NAME = 0x5B
    LANGUAGE_PREFERENCE = 0x5F2D
    SALUTATION = 0x5F35
    CARDHOLDER_RELATED_DATA = 0x65
    URL = 0x5F50
    HISTORICAL_BYTES = 0x5F52
    APPLICATION_RELATED_DATA = 0x6E
    DISCRETIONARY_DATA_OBJECTS = 0x73
    EXTENDED_CAPABILITIES = 0xC0
    ALGORITHM_ATTRIBUTES_SIG = 0xC1
    ALGORITHM_ATTRIBUTES_DEC = 0xC2
    ALGORITHM_ATTRIBUTES_AUT = 0xC3
    PW_STATUS_BYTES = 0xC4
    FINGERPRINTS = 0xC5
    CA_FINGERPRINTS = 0xC6
    FINGERPRINT_SIG = 0xC7
    FINGERPRINT_DEC = 0xC8
    FINGERPRINT_AUT = 0xC9
    CA_FINGERPRINT_1 = 0xCA
    CA_FINGERPRINT_2 = 0xCB
    CA_FINGERPRINT_3 = 0xCC
    GENERATION_TIMES = 0xCD
    GENERATION_TIME_SIG = 0xCE
    GENERATION_TIME_DEC = 0xCF
    GENERATION_TIME_AUT = 0xD0
    RESETTING_CODE = 0xD3
    UIF_SIG = 0xD6
    UIF_DEC = 0xD7
    UIF_AUT = 0xD8
    KEY_INFORMATION = 0xDE
    SECURITY_SUPPORT_TEMPLATE = 0x7A
    DIGITAL_SIGNATURE_COUNTER = 0x93
    CARDHOLDER_CERTIFICATE = 0x7F21
    EXTENDED_LENGTH_INFORMATION = 0x7F66
    GENERAL_FEATURE_MANAGEMENT = 0x7F74
    KDF = 0xF9
    ALGORITHM_INFORMATION = 0xFA
    # inside command / response data
    EXTENDED_HEADER_LIST = 0x4D
    CARDHOLDER_PRIVATE_KEY_TEMPLATE = 0x7F48
    CARDHOLDER_PRIVATE_KEY = 0x5F48
    PUBLIC_KEY = 0x7F49
    CIPHER = 0xA6
    TAG_LIST = 0x5C
    TAG_REFERENCE = 0x60        # SELECT DATA wrapper (§7.2.5)
    KEY_REFERENCE = 0x83        # MSE (§7.2.18)
    BUTTON = 0x81               # in 7F74


class PUBLIC_KEY_TAG(enum.IntEnum):
    """Inside the public key template 7F49 (§7.2.14)."""

    MODULUS = 0x81
    EXPONENT = 0x82
    POINT = 0x86


class PRIVATE_KEY_TAG(enum.IntEnum):
    """Inside the cardholder private key template 7F48 (§4.4.3.12)."""

    E = 0x91
    P = 0x92                   # also the ECC private scalar
    Q = 0x93
    PQ = 0x94                  # 1/q mod p
    DP1 = 0x95                 # d mod (p-1)
    DQ1 = 0x96                 # d mod (q-1)
    N = 0x97
    PUBLIC_KEY = 0x99          # ECC public key (import format FF)


class ALGORITHM_ID(enum.IntEnum):
    """First byte of the algorithm attributes C1-C3 (§4.4.3.10; RFC 4880 / RFC 6637 ids)."""

    RSA = 0x01
    ECDH = 0x12
    ECDSA = 0x13
    EDDSA = 0x16


class RSA_IMPORT_FORMAT(enum.IntEnum):
    """Last byte of RSA algorithm attributes (§4.4.3.10)."""

    STANDARD = 0x00
    STANDARD_WITH_MODULUS = 0x01
    CRT = 0x02
    CRT_WITH_MODULUS = 0x03


#: ECC attributes may end with FF: "import with public key" (§4.4.3.10).
ECC_IMPORT_WITH_PUBLIC_KEY = 0xFF


class KDF_ALGORITHM(enum.IntEnum):
    """KDF-DO F9, tag 81 (§4.3.2)."""

    NONE = 0x00
    KDF_ITERSALTED_S2K = 0x03


class KDF_HASH(enum.IntEnum):
    """KDF-DO F9, tag 82 (§4.3.2; RFC 4880 hash ids)."""

    SHA256 = 0x08
    SHA512 = 0x0A

    @property
    def digest_size(self) -> int:
        return 32 if self == KDF_HASH.SHA256 else 64


class KDF_TAG(enum.IntEnum):
    """Inside the KDF-DO F9 (§4.3.2)."""

    ALGORITHM = 0x81
    HASH_ALGORITHM = 0x82
    ITERATION_COUNT = 0x83
    SALT_PW1 = 0x84
    SALT_RC = 0x85
    SALT_PW3 = 0x86
    INITIAL_HASH_PW1 = 0x87
    INITIAL_HASH_PW3 = 0x88


class UIF(enum.IntEnum):
    """User interaction flag, first byte of D6-D8 (§4.4.3.6)."""

    DISABLED = 0x00
    ENABLED = 0x01
    PERMANENTLY_ENABLED = 0x02


#: Second byte of D6-D8 and the value in 7F74: "button" (§4.1.3.2 general feature management, b6).
FEATURE_BUTTON = 0x20


class KEY_STATUS(enum.IntEnum):
    """Key information DE (§4.4.3.13)."""

    NOT_PRESENT = 0x00
    GENERATED = 0x01
    IMPORTED = 0x02


class LIFE_CYCLE(enum.IntEnum):
    """Life cycle status byte in the historical bytes (§6, ISO 7816-4 table 13)."""

    TERMINATED = 0x03
    OPERATIONAL = 0x05


@dataclass(frozen=True)
class Curve:
    """An elliptic curve the card offers, with the OID GnuPG writes into C1-C3 (common/openpgp-oid.c)."""

    name: str          # GnuPG's name
    oid: bytes         # DER contents of the OBJECT IDENTIFIER (no tag, no length)
    algorithm: ALGORITHM


CURVES = (
    Curve("nistp256", bytes.fromhex("2A8648CE3D030107"), ALGORITHM.ECCP256),
    Curve("nistp384", bytes.fromhex("2B81040022"), ALGORITHM.ECCP384),
    Curve("nistp521", bytes.fromhex("2B81040023"), ALGORITHM.ECCP521),
    Curve("brainpoolP256r1", bytes.fromhex("2B2403030208010107"), ALGORITHM.BRAINPOOLP256R1),
    Curve("brainpoolP384r1", bytes.fromhex("2B240303020801010B"), ALGORITHM.BRAINPOOLP384R1),
    Curve("brainpoolP512r1", bytes.fromhex("2B240303020801010D"), ALGORITHM.BRAINPOOLP512R1),
    Curve("secp256k1", bytes.fromhex("2B8104000A"), ALGORITHM.SECP256K1),
    Curve("ed25519", bytes.fromhex("2B06010401DA470F01"), ALGORITHM.ED25519),
    Curve("cv25519", bytes.fromhex("2B060104019755010501"), ALGORITHM.X25519),
)
CURVE_BY_OID = {c.oid: c for c in CURVES}
CURVE_BY_ALGORITHM = {c.algorithm: c for c in CURVES}
CURVE_BY_NAME = {c.name.lower(): c for c in CURVES}

#: RSA sizes the card generates and imports.
RSA_SIZES = (2048, 3072, 4096)
#: e length in bits in the attributes GnuPG writes (change_rsa_keyattr: 0x0020).
RSA_EXPONENT_BITS = 32
