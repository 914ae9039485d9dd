"""PIV constants, named as NIST SP 800-73-4 / SP 800-78-4 and Yubico's PIV extensions name them."""

from __future__ import annotations

import enum

from ..keys import ALGORITHM  # noqa: F401  (asymmetric algorithm ids, SP 800-78-4 table 6-2)

#: PIV application identifier (SP 800-73-4 Part 1 §2.2): RID A000000308, PIX 00001000 0100.
PIV_AID = bytes.fromhex("A000000308000010000100")
#: Application label in the APT (tag 50): not "PivApplet v" nor a YubiKey label, see docs/card-state-format.md.
APPLICATION_LABEL = b"ccidgadget PIV"

#: Firmware version reported by GET VERSION (Yubico INS FD).  5.7 is the first
#: YubiKey firmware with RSA-3072/4096, Ed25519, X25519 and MOVE KEY; ykman
#: and yubico-piv-tool gate those features (and GET METADATA, AES management
#: keys, GET SERIAL) on the reported version.
FIRMWARE_VERSION = (5, 7, 1)


class INS(enum.IntEnum):
    """Instruction bytes (SP 800-73-4 Part 2 §3, Yubico PIV extensions)."""

    VERIFY = 0x20
    CHANGE_REFERENCE_DATA = 0x24
    RESET_RETRY_COUNTER = 0x2C
    GENERATE_ASYMMETRIC_KEY_PAIR = 0x47
    GENERAL_AUTHENTICATE = 0x87
    GET_DATA = 0xCB
    PUT_DATA = 0xDB
    GET_RESPONSE = 0xC0
    SELECT = 0xA4
    # Yubico
    MOVE_KEY = 0xF6
    GET_METADATA = 0xF7
    GET_SERIAL = 0xF8
    ATTEST = 0xF9
    SET_PIN_RETRIES = 0xFA
    RESET = 0xFB
    GET_VERSION = 0xFD
    IMPORT_ASYMMETRIC_KEY = 0xFE
    SET_MANAGEMENT_KEY = 0xFF


class KEY_REFERENCE(enum.IntEnum):
    """Key references for VERIFY / CHANGE REFERENCE DATA (SP 800-73-4 Part 1 table 4)."""

    GLOBAL_PIN = 0x00
    PIV_PIN = 0x80
    PUK = 0x81
    OCC = 0x96            # on-card biometric comparison (YubiKey Bio); not supported


class SLOT(enum.IntEnum):
    """Key slots (SP 800-73-4 Part 1 table 4, Yubico F9)."""

    AUTHENTICATION = 0x9A
    CARD_MANAGEMENT = 0x9B
    SIGNATURE = 0x9C
    KEY_MANAGEMENT = 0x9D
    CARD_AUTH = 0x9E
    RETIRED1 = 0x82
    RETIRED2 = 0x83
    RETIRED3 = 0x84
    RETIRED4 = 0x85
    RETIRED5 = 0x86
    RETIRED6 = 0x87
    RETIRED7 = 0x88
    RETIRED8 = 0x89
    RETIRED9 = 0x8A
    RETIRED10 = 0x8B
    RETIRED11 = 0x8C
    RETIRED12 = 0x8D
    RETIRED13 = 0x8E
    RETIRED14 = 0x8F
    RETIRED15 = 0x90
    RETIRED16 = 0x91
    RETIRED17 = 0x92
    RETIRED18 = 0x93
    RETIRED19 = 0x94
    RETIRED20 = 0x95
    ATTESTATION = 0xF9


#: Slots that hold an asymmetric key (all but 9B).
KEY_SLOTS = tuple(s for s in SLOT if s != SLOT.CARD_MANAGEMENT)
RETIRED_SLOTS = tuple(range(0x82, 0x96))


class MANAGEMENT_ALGORITHM(enum.IntEnum):
    """Card management key (9B) algorithms (SP 800-78-4 table 6-1)."""

    TDES = 0x03
    AES128 = 0x08
    AES192 = 0x0A
    AES256 = 0x0C

    @property
    def key_length(self) -> int:
        return {0x03: 24, 0x08: 16, 0x0A: 24, 0x0C: 32}[int(self)]

    @property
    def block_size(self) -> int:
        return 8 if self == MANAGEMENT_ALGORITHM.TDES else 16


class OBJECT_ID(enum.IntEnum):
    """Data object tags (SP 800-73-4 Part 1 table 3; Yubico 5FFFxx)."""

    CARD_CAPABILITY_CONTAINER = 0x5FC107
    CHUID = 0x5FC102
    X509_PIV_AUTHENTICATION = 0x5FC105      # 9A
    FINGERPRINTS = 0x5FC103
    SECURITY_OBJECT = 0x5FC106
    FACIAL_IMAGE = 0x5FC108
    PRINTED_INFORMATION = 0x5FC109
    X509_DIGITAL_SIGNATURE = 0x5FC10A       # 9C
    X509_KEY_MANAGEMENT = 0x5FC10B          # 9D
    X509_CARD_AUTHENTICATION = 0x5FC101     # 9E
    DISCOVERY = 0x7E
    KEY_HISTORY = 0x5FC10C
    IRIS_IMAGES = 0x5FC121
    BIOMETRIC_GROUP_TEMPLATE = 0x7F61
    SM_CERT_SIGNER = 0x5FC122
    PAIRING_CODE_REFERENCE = 0x5FC123
    RETIRED_X509_1 = 0x5FC10D               # 82 ... RETIRED_X509_20 = 0x5FC120 (95)
    YUBICO_PIVMAN_DATA = 0x5FFF00
    YUBICO_ATTESTATION = 0x5FFF01           # certificate of the F9 key


#: Objects readable only after PIN verification (SP 800-73-4 Part 1 table 2).
PIN_PROTECTED_OBJECTS = frozenset({
    OBJECT_ID.FINGERPRINTS, OBJECT_ID.FACIAL_IMAGE, OBJECT_ID.PRINTED_INFORMATION, OBJECT_ID.IRIS_IMAGES,
})


def certificate_object_for(slot: int) -> int:
    """The X.509 certificate object of a key slot."""
    fixed = {0x9A: OBJECT_ID.X509_PIV_AUTHENTICATION, 0x9C: OBJECT_ID.X509_DIGITAL_SIGNATURE,
             0x9D: OBJECT_ID.X509_KEY_MANAGEMENT, 0x9E: OBJECT_ID.X509_CARD_AUTHENTICATION,
             0xF9: OBJECT_ID.YUBICO_ATTESTATION}
    if slot in fixed:
        return int(fixed[slot])
    if 0x82 <= slot <= 0x95:
        return OBJECT_ID.RETIRED_X509_1 + (slot - 0x82)
    raise ValueError(f"slot {slot:02X} has no certificate object")


def is_valid_object_id(tag: int) -> bool:
    """Objects PUT/GET DATA accept: SP 800-73-4 5FC101..5FC123, Discovery, BIT, Yubico 5FFF00..5FFF15."""
    return (0x5FC101 <= tag <= 0x5FC123 or tag in (OBJECT_ID.DISCOVERY, OBJECT_ID.BIOMETRIC_GROUP_TEMPLATE)
            or 0x5FFF00 <= tag <= 0x5FFF15)


class PIN_POLICY(enum.IntEnum):
    """Yubico PIN policy (GENERATE/IMPORT tag AA)."""

    DEFAULT = 0x00
    NEVER = 0x01
    ONCE = 0x02
    ALWAYS = 0x03
    MATCH_ONCE = 0x04
    MATCH_ALWAYS = 0x05


class TOUCH_POLICY(enum.IntEnum):
    """Yubico touch policy (tag AB), enforced through the card's `UserPresence` (docs/presence.md).

    CACHED: a touch counts for `TOUCH_CACHE_SECONDS` after it, as on a YubiKey.
    """

    DEFAULT = 0x00
    NEVER = 0x01
    ALWAYS = 0x02
    CACHED = 0x03


#: How long a touch satisfies a CACHED key (YubiKey: 15 s, yubikit piv.TOUCH_POLICY.CACHED).
TOUCH_CACHE_SECONDS = 15.0


def default_pin_policy(slot: int) -> PIN_POLICY:
    """SP 800-73-4 Part 1 §3.3 / YubiKey defaults: 9C always, 9E never, others once."""
    if slot == SLOT.SIGNATURE:
        return PIN_POLICY.ALWAYS
    if slot in (SLOT.CARD_AUTH, SLOT.ATTESTATION):
        return PIN_POLICY.NEVER
    return PIN_POLICY.ONCE


class ORIGIN(enum.IntEnum):
    """GET METADATA tag 03."""

    GENERATED = 0x01
    IMPORTED = 0x02


# GENERAL AUTHENTICATE dynamic authentication template (SP 800-73-4 Part 2 table 7)
TAG_DYNAMIC_AUTH = 0x7C
TAG_WITNESS = 0x80
TAG_CHALLENGE = 0x81
TAG_RESPONSE = 0x82
TAG_EXPONENTIATION = 0x85
# PUT/GET DATA
TAG_TAG_LIST = 0x5C
TAG_DATA = 0x53
# Certificate container (SP 800-73-4 Part 1 Appendix A)
TAG_CERTIFICATE = 0x70
TAG_CERT_INFO = 0x71
TAG_ERROR_DETECTION = 0xFE
# GENERATE
TAG_CONTROL_REFERENCE = 0xAC
TAG_ALGORITHM = 0x80
TAG_PIN_POLICY = 0xAA
TAG_TOUCH_POLICY = 0xAB
TAG_PUBLIC_KEY = 0x7F49
# GET METADATA (Yubico)
TAG_META_ALGORITHM = 0x01
TAG_META_POLICY = 0x02
TAG_META_ORIGIN = 0x03
TAG_META_PUBLIC_KEY = 0x04
TAG_META_IS_DEFAULT = 0x05
TAG_META_RETRIES = 0x06

DEFAULT_PIN = "123456"
DEFAULT_PUK = "12345678"
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
DEFAULT_MANAGEMENT_ALGORITHM = MANAGEMENT_ALGORITHM.TDES
DEFAULT_TRIES = 3

#: Largest data object PUT DATA accepts (content of tag 53).  YubiKeys stop at
#: 3063 bytes; we allow larger certificate chains but keep a bound.
MAX_OBJECT_SIZE = 16384
#: Bound on all objects together (the state file is rewritten on each change).
MAX_TOTAL_OBJECTS = 512 * 1024
