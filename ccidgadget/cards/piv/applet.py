"""The PIV card application (NIST SP 800-73-4 Part 2) with the Yubico extensions.

`PivApplet` handles commands once `AppletCard` has reassembled command chains
and will split long answers with 61xx; `PivCard` is the card (ATR, storage).

Security status (volatile, SP 800-73-4 Part 1 §4.1): PIN verified, a "fresh"
verification for PIN-always keys (slot 9C by default; consumed by the next
such operation), and management key authenticated.  All three are cleared by
a card reset and on a failed VERIFY of the PIN.

Keys at rest (cards/vault.py): a successful VERIFY of the PIN also opens the
card's data key (same KDF call); the card holds it, and the PIN-protected keys
it opens, exactly as long as the PIN stays verified, and drops them wherever
the verification is lost (reset, power-off, removal, deselection, VERIFY
P1=FF, a failed VERIFY).  A PUK check opens the data key only for the
command that needs it (RESET RETRY COUNTER, CHANGE REFERENCE DATA of the PUK).

Every state change is saved through the card's `CardStore` before the answer
leaves; if saving fails the command answers 6581 and the card keeps its old
state (`_commit`).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ...cryptocompat import TripleDES
from ..applet import AppletCard, StatefulApplet, StatefulCardSide, VaultCardMixin
from ..iso7816 import SW, ApduError, CommandAPDU, make_atr
from ..keys import ALGORITHM, EC_CURVES, EC_FIELD_BYTES, RSA_BITS, RSA_PUBLIC_EXPONENT, CardKey, rsa_key_from_primes
from ..pin import PIV_PIN_MAX, piv_check_padded, piv_pad
from ..presence import UserPresence
from ..storage import CardStore, StorageError
from ..vault import DEFAULT_OPTIONS, VaultOptions, save_migrated, warn_if_unbound
from ..tlv import parse_dict, parse_tlv, tlv, unwrap
from . import objects
from .constants import (APPLICATION_LABEL, DEFAULT_MANAGEMENT_ALGORITHM, DEFAULT_MANAGEMENT_KEY, DEFAULT_PIN,
                        DEFAULT_PUK, DEFAULT_TRIES, FIRMWARE_VERSION, INS, KEY_REFERENCE, KEY_SLOTS,
                        MANAGEMENT_ALGORITHM, MAX_OBJECT_SIZE, MAX_TOTAL_OBJECTS, OBJECT_ID, ORIGIN,
                        PIN_PROTECTED_OBJECTS, PIN_POLICY, PIV_AID, RETIRED_SLOTS, SLOT, TAG_ALGORITHM,
                        TAG_CHALLENGE, TAG_CONTROL_REFERENCE, TAG_DATA, TAG_DYNAMIC_AUTH, TAG_EXPONENTIATION,
                        TAG_META_ALGORITHM, TAG_META_IS_DEFAULT, TAG_META_ORIGIN, TAG_META_POLICY,
                        TAG_META_PUBLIC_KEY, TAG_META_RETRIES, TAG_PIN_POLICY, TAG_PUBLIC_KEY, TAG_RESPONSE,
                        TAG_TAG_LIST, TAG_TOUCH_POLICY, TAG_WITNESS, TOUCH_CACHE_SECONDS, TOUCH_POLICY,
                        certificate_object_for,
                        default_pin_policy, is_valid_object_id)
from .state import ManagementKey, PivState, SlotKey, check_management_key

log = logging.getLogger(__name__)

#: ATR historical bytes: ISO 7816-4 §8.1.1 compact-TLV (category 80), card
#: issuer's data (tag 5, 10 bytes) "ccidgadget", status indicator (tag 8,
#: SW 9000).  OpenSC does not map them to any vendor, so it treats the card
#: as a generic PIV (PIV_II_BASE), still sends GET VERSION and learns RSA-4096
#: / Ed25519 / X25519 from the AC/80 list of the APT.  We do not claim to be a
#: YubiKey in the ATR.
ATR_HISTORICAL = b"\x80\x5A" + b"ccidgadget" + b"\x82\x90\x00"

#: Algorithms listed in the APT (SP 800-73-4 Part 2 §3.1.1, tag AC/80).
APT_ALGORITHMS = (0x03, 0x08, 0x0A, 0x0C, 0x06, 0x07, 0x05, 0x16, 0x11, 0x14, 0xE0, 0xE1)
#: The answer to SELECT: the Application Property Template (SP 800-73-4 Part 2 §3.1.1 table 3); it never
#: changes, so it is built once (19 TLVs per SELECT were a third of a short APDU's time in the daemon).
APPLICATION_PROPERTY_TEMPLATE = tlv(0x61, tlv(0x4F, PIV_AID[5:]) + tlv(0x79, tlv(0x4F, PIV_AID[:5]))
                                    + tlv(0x50, APPLICATION_LABEL)
                                    + tlv(0xAC, b"".join(tlv(0x80, bytes([a])) for a in APT_ALGORITHMS)
                                          + tlv(0x06, b"\x00")))

#: Commands that need no PIV application state and do not clear pending
#: management-key challenges.
_PASSIVE = {INS.GET_VERSION, INS.GET_SERIAL, INS.GET_METADATA}


def _mgmt_cipher(mgmt: ManagementKey) -> Cipher:
    if mgmt.algorithm == MANAGEMENT_ALGORITHM.TDES:
        return Cipher(TripleDES(mgmt.key), modes.ECB())
    return Cipher(algorithms.AES(mgmt.key), modes.ECB())


def _encrypt(mgmt: ManagementKey, block: bytes) -> bytes:
    e = _mgmt_cipher(mgmt).encryptor()
    return e.update(block) + e.finalize()


def public_key_template(key: CardKey) -> bytes:
    """The public key data objects inside 7F49 (SP 800-73-4 Part 2 table 11): 81 n 82 e, or 86 point."""
    if key.algorithm.is_rsa:
        numbers = key.public_key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return tlv(0x81, n) + tlv(0x82, e)
    return tlv(0x86, key.public_point())


class PivCardSide(StatefulCardSide, Protocol):
    """What the PIV applet may ask of its card (`PivCard` implements it): its store, state and data key
    (`StatefulCardSide`), plus what a reset and the touch policy need, and nothing more."""

    state: PivState
    """The current PIV state; `commit` replaces it once the new one is saved."""

    options: VaultOptions
    """The [vault] configuration: the scrypt cost (`kdf`) of the PIN/PUK wraps a RESET makes."""

    presence: UserPresence
    """Where a touch is asked for (Yubico touch policy); 6982 when it refuses."""

    last_touch: float
    """`clock()` time of the last confirmed touch (CACHED touch policy); kept across card resets."""

    def clock(self) -> float:
        """Monotonic seconds, for the CACHED touch policy (tests replace it)."""


class PivApplet(StatefulApplet):
    aid = PIV_AID
    name = "PIV"
    card: PivCardSide

    def __init__(self, card: PivCardSide) -> None:
        self.card = card
        self.clear_security_status()

    # -- volatile security status --------------------------------------------
    def clear_security_status(self) -> None:
        self._pin_lost()
        self.mgmt_authenticated = False
        self._auth_pending: tuple[str, bytes] | None = None   # ("mutual"|"external", secret)

    def _pin_lost(self) -> None:
        """The PIN is no longer verified: the data key and PIN-protected keys leave memory."""
        self.pin_verified = False
        self.pin_fresh = False          # VERIFY just happened: allows one PIN-always operation
        self.card.lock()

    def deselect(self) -> None:
        self.clear_security_status()

    @property
    def state(self) -> PivState:
        return self.card.state

    # -- SELECT -------------------------------------------------------------
    def select(self, cmd: CommandAPDU) -> bytes:
        return APPLICATION_PROPERTY_TEMPLATE

    # -- dispatch -----------------------------------------------------------
    def process(self, cmd: CommandAPDU):
        ins, handler = self.handler_for(cmd, INS, self._HANDLERS)
        if ins != INS.GENERAL_AUTHENTICATE and ins not in _PASSIVE:
            self._auth_pending = None
        return handler(self, cmd)

    # -- persistence --------------------------------------------------------
    _commit = StatefulApplet.commit
    _persist_current = StatefulApplet.persist_current

    def committed(self) -> None:
        if self.card.session is None:
            self.card.lock()        # a key generated or imported while locked leaves memory once sealed

    def _verify_reference(self, which: str, block: bytes) -> bytes:
        """VERIFY-style check of the PIN or PUK with its counter; the data key it opens (6581 if unusable)."""
        return self.check_reference(self.state.pin if which == "pin" else self.state.puk, block, which.upper())

    # -- access conditions --------------------------------------------------
    def _require_mgmt(self) -> None:
        if not self.mgmt_authenticated:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _require_pin_policy(self, policy: PIN_POLICY) -> None:
        if policy == PIN_POLICY.NEVER:
            return
        if policy in (PIN_POLICY.ALWAYS, PIN_POLICY.MATCH_ALWAYS):
            if not (self.pin_verified and self.pin_fresh):
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
            self.pin_fresh = False
            return
        if not self.pin_verified:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _require_touch(self, policy: TOUCH_POLICY, what: str) -> None:
        """Yubico touch policy: ask the card's presence (6982 on deny, timeout, abort or no button)."""
        if policy in (TOUCH_POLICY.NEVER, TOUCH_POLICY.DEFAULT):
            return
        card = self.card
        if policy == TOUCH_POLICY.CACHED and card.clock() - card.last_touch < TOUCH_CACHE_SECONDS:
            return
        if not card.presence.confirm(what):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        card.last_touch = card.clock()

    # -- VERIFY (SP 800-73-4 Part 2 §3.2.1) ----------------------------------
    def verify(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 == 0xFF:
            # Yubico 5.4.3+: P1=FF resets the verification status of the PIN.
            if cmd.p2 != KEY_REFERENCE.PIV_PIN or cmd.data:
                raise ApduError(SW.INCORRECT_P1P2 if cmd.p2 != KEY_REFERENCE.PIV_PIN else SW.WRONG_LENGTH)
            self._pin_lost()
            return b""
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.p2 == KEY_REFERENCE.PIV_PIN:
            which, slot = "pin", self.state.pin
        elif cmd.p2 == KEY_REFERENCE.PUK:
            which, slot = "puk", self.state.puk
        else:
            raise ApduError(SW.REFERENCE_NOT_FOUND)     # global PIN, OCC: not on this card
        if not cmd.data:
            # Empty VERIFY: 9000 if verified, else tries left (63Cx) or blocked (6983).
            if slot.blocked:
                raise ApduError(SW.AUTH_METHOD_BLOCKED)
            if which == "pin" and self.pin_verified:
                return b""
            raise ApduError(SW.VERIFY_FAILED | min(slot.tries_left, 15))
        block = self._reference_block(cmd.data)
        if which == "pin":
            self._pin_lost()
        dek = self._verify_reference(which, block)
        if which == "pin":
            self._unlock(dek)
            self.pin_verified = self.pin_fresh = True
        return b""

    @staticmethod
    def _reference_block(data: bytes) -> bytes:
        """The 8 bytes compared with the PIN or PUK.  Any 8 bytes that are not the reference data are
        a wrong value and use a try (63Cx), a badly padded or empty block included, as on a YubiKey:
        yubikit blocks the PIN and PUK before a reset with empty (all-FF) blocks.  Only a new value
        must be well formed (piv_check_padded)."""
        if len(data) != PIV_PIN_MAX:
            raise ApduError(SW.WRONG_DATA)
        return data

    _unlock = StatefulApplet.unlock_card

    # -- CHANGE REFERENCE DATA (§3.2.2) / RESET RETRY COUNTER (§3.2.3) -------
    def _two_blocks(self, cmd: CommandAPDU) -> tuple[bytes, bytes]:
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != 2 * PIV_PIN_MAX:
            raise ApduError(SW.WRONG_DATA)
        return self._reference_block(cmd.data[:PIV_PIN_MAX]), cmd.data[PIV_PIN_MAX:]

    def change_reference_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 not in (KEY_REFERENCE.PIV_PIN, KEY_REFERENCE.PUK):
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        old, new = self._two_blocks(cmd)
        which = "pin" if cmd.p2 == KEY_REFERENCE.PIV_PIN else "puk"
        if which == "pin":
            self._pin_lost()
        dek = self._verify_reference(which, old)
        new = piv_check_padded(new)
        # A PIN change rewraps the data key only: nothing else is encrypted again.
        new_state = self.state.clone()
        target = new_state.pin if which == "pin" else new_state.puk
        target.set(new, is_default=new == piv_pad(DEFAULT_PIN if which == "pin" else DEFAULT_PUK), dek=dek)
        self._commit(new_state)
        if which == "pin":
            self._unlock(dek)
            self.pin_verified = True
        return b""

    def reset_retry_counter(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != KEY_REFERENCE.PIV_PIN:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        puk, new = self._two_blocks(cmd)
        dek = self._verify_reference("puk", puk)
        new = piv_check_padded(new)
        new_state = self.state.clone()
        new_state.pin.set(new, is_default=new == piv_pad(DEFAULT_PIN), dek=dek)
        self._commit(new_state)
        return b""

    # -- GET DATA (§3.1.2) / PUT DATA (§3.3.2) --------------------------------
    @staticmethod
    def _object_id(value: bytes) -> int:
        if not 1 <= len(value) <= 3:
            raise ApduError(SW.WRONG_DATA)
        return int.from_bytes(value, "big")

    def get_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0x3FFF:
            raise ApduError(SW.INCORRECT_P1P2)
        items = parse_tlv(cmd.data)
        if len(items) != 1 or items[0][0] != TAG_TAG_LIST:
            raise ApduError(SW.WRONG_DATA)
        tag = self._object_id(items[0][1])
        if tag == OBJECT_ID.DISCOVERY:
            return tlv(OBJECT_ID.DISCOVERY, objects.make_discovery())
        if not is_valid_object_id(tag):
            raise ApduError(SW.FILE_NOT_FOUND)
        if tag in PIN_PROTECTED_OBJECTS and not self.pin_verified:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        content = self._open(lambda: self.state.object_content(tag, self.card.session))
        if content is None and tag == OBJECT_ID.KEY_HISTORY:
            content = objects.make_key_history(self._retired_with_certificates())
        if content is None:
            raise ApduError(SW.FILE_NOT_FOUND)
        if tag == OBJECT_ID.BIOMETRIC_GROUP_TEMPLATE:
            return tlv(OBJECT_ID.BIOMETRIC_GROUP_TEMPLATE, content)
        return tlv(TAG_DATA, content)

    def _retired_with_certificates(self) -> int:
        """Key History C1: OpenSC reads retired objects 1..C1, so count up to the last one present."""
        last = 0
        for i, slot in enumerate(RETIRED_SLOTS, 1):
            if self.state.has_object(certificate_object_for(slot)):
                last = i
        return last

    def put_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0x3FFF:
            raise ApduError(SW.INCORRECT_P1P2)
        self._require_mgmt()
        items = parse_tlv(cmd.data)
        if len(items) != 2 or items[0][0] != TAG_TAG_LIST or items[1][0] != TAG_DATA:
            raise ApduError(SW.WRONG_DATA)
        tag = self._object_id(items[0][1])
        if not is_valid_object_id(tag) or tag in (OBJECT_ID.DISCOVERY, OBJECT_ID.BIOMETRIC_GROUP_TEMPLATE):
            raise ApduError(SW.WRONG_DATA)
        content = items[1][1]
        if len(content) > MAX_OBJECT_SIZE:
            raise ApduError(SW.NOT_ENOUGH_MEMORY)
        new_state = self.state.clone()
        if not content and not new_state.has_object(tag):
            return b""                       # deleting an absent object: nothing to save
        new_state.put_object(tag, content)
        if new_state.objects_size() > MAX_TOTAL_OBJECTS:
            raise ApduError(SW.NOT_ENOUGH_MEMORY)
        self._commit(new_state)
        return b""

    # -- GENERAL AUTHENTICATE (§3.2.4) ----------------------------------------
    def general_authenticate(self, cmd: CommandAPDU) -> bytes:
        pending, self._auth_pending = self._auth_pending, None
        try:
            template = parse_dict(unwrap(cmd.data, TAG_DYNAMIC_AUTH),
                                  allowed={TAG_WITNESS, TAG_CHALLENGE, TAG_RESPONSE, TAG_EXPONENTIATION})
        except ApduError:
            raise ApduError(SW.WRONG_DATA) from None
        if cmd.p2 == SLOT.CARD_MANAGEMENT:
            return self._authenticate_management(cmd.p1, template, pending)
        return self._private_key_operation(cmd.p1, cmd.p2, template)

    def _authenticate_management(self, alg: int, t: dict[int, bytes], pending) -> bytes:
        mgmt = self.state.management
        if alg not in (mgmt.algorithm, 0x00):
            raise ApduError(SW.INCORRECT_P1P2)
        block = mgmt.algorithm.block_size
        keys = set(t)
        if keys == {TAG_WITNESS} and not t[TAG_WITNESS] and alg:
            # Mutual authentication step 1: the card's witness, encrypted.
            witness = os.urandom(block)
            self._auth_pending = ("mutual", witness)
            return tlv(TAG_DYNAMIC_AUTH, tlv(TAG_WITNESS, _encrypt(mgmt, witness)))
        if keys == {TAG_CHALLENGE} and not t[TAG_CHALLENGE]:
            # External authentication step 1 (and OpenSC's GET CHALLENGE, P1=00): a random challenge.
            challenge = os.urandom(block)
            self._auth_pending = ("external", challenge)
            return tlv(TAG_DYNAMIC_AUTH, tlv(TAG_CHALLENGE, challenge))
        if not alg:
            raise ApduError(SW.INCORRECT_P1P2)
        self.mgmt_authenticated = False
        if keys in ({TAG_WITNESS, TAG_CHALLENGE}, {TAG_WITNESS, TAG_CHALLENGE, TAG_RESPONSE}) \
                and not t.get(TAG_RESPONSE):
            # Mutual authentication step 2: host returns the decrypted witness and its challenge
            # (SP 800-73-4 asks for an empty 82; yubico-piv-tool leaves it out).
            if len(t[TAG_WITNESS]) != block or len(t[TAG_CHALLENGE]) != block:
                raise ApduError(SW.WRONG_DATA)
            if pending is None or pending[0] != "mutual":
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
            if not hmac.compare_digest(t[TAG_WITNESS], pending[1]):
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
            self._require_touch(mgmt.touch_policy, "PIV management key authentication")
            self._authenticated(mgmt)
            return tlv(TAG_DYNAMIC_AUTH, tlv(TAG_RESPONSE, _encrypt(mgmt, t[TAG_CHALLENGE])))
        if keys == {TAG_RESPONSE} and t[TAG_RESPONSE]:
            # External authentication step 2: host returns E_K(challenge).
            if len(t[TAG_RESPONSE]) != block:
                raise ApduError(SW.WRONG_DATA)
            if pending is None or pending[0] != "external":
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
            if not hmac.compare_digest(t[TAG_RESPONSE], _encrypt(mgmt, pending[1])):
                raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
            self._require_touch(mgmt.touch_policy, "PIV management key authentication")
            self._authenticated(mgmt)
            return b""
        raise ApduError(SW.WRONG_DATA)

    def _authenticated(self, mgmt: ManagementKey) -> None:
        self.mgmt_authenticated = True
        if mgmt.is_default:
            log.warning("PIV card %d: authenticated with the DEFAULT management key — anyone can "
                        "change this card; set a new one (yubico-piv-tool -a set-mgm-key)", self.state.serial)

    def _private_key_operation(self, alg: int, slot: int, t: dict[int, bytes]) -> bytes:
        if slot not in KEY_SLOTS or slot == SLOT.ATTESTATION:
            raise ApduError(SW.INCORRECT_P1P2)
        entry = self.state.keys.get(slot)
        if entry is None or entry.key.algorithm != alg:
            raise ApduError(SW.INCORRECT_P1P2)
        if TAG_RESPONSE not in t or t[TAG_RESPONSE]:
            raise ApduError(SW.WRONG_DATA)
        has_challenge, has_exp = TAG_CHALLENGE in t, TAG_EXPONENTIATION in t
        if has_challenge == has_exp or set(t) - {TAG_RESPONSE, TAG_CHALLENGE, TAG_EXPONENTIATION}:
            raise ApduError(SW.WRONG_DATA)
        # Validate the input before spending a PIN-always authorisation on it.
        data = t[TAG_CHALLENGE] if has_challenge else t[TAG_EXPONENTIATION]
        kind = self._operation_kind(entry.key, has_challenge, data)
        self._require_pin_policy(entry.pin_policy)
        key = self._open(lambda: entry.private(self.state.vault, self.card.session))
        self._require_touch(entry.touch_policy, f"PIV slot {slot:02X} {_OPERATION_NAMES[kind]}")
        try:
            if kind == "rsa":
                result = key.sign_raw_rsa(data)
            elif kind == "ecdsa":
                result = key.sign_ecdsa(data)
            elif kind == "ed25519":
                result = key.sign_ed25519(data)
            elif kind == "ecdh":
                result = key.ecdh(data)
            else:
                result = key.x25519(data)
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        return tlv(TAG_DYNAMIC_AUTH, tlv(TAG_RESPONSE, result))

    _open = StatefulApplet.open_sealed

    @staticmethod
    def _operation_kind(key, challenge: bool, data: bytes) -> str:
        alg = key.algorithm
        if alg.is_rsa:
            if not challenge or len(data) != RSA_BITS[alg] // 8:
                raise ApduError(SW.WRONG_DATA)
            return "rsa"
        if alg.is_ec:
            if challenge:
                if not 1 <= len(data) <= 64:
                    raise ApduError(SW.WRONG_DATA)
                return "ecdsa"
            if len(data) != 1 + 2 * EC_FIELD_BYTES[alg] or data[0] != 0x04:
                raise ApduError(SW.WRONG_DATA)
            return "ecdh"
        if alg == ALGORITHM.ED25519:
            if not challenge:
                raise ApduError(SW.WRONG_DATA)
            return "ed25519"
        if challenge or len(data) != 32:
            raise ApduError(SW.WRONG_DATA)
        return "x25519"

    # -- GENERATE ASYMMETRIC KEY PAIR (§3.3.2) / IMPORT (Yubico FE) -----------
    @staticmethod
    def _policies(template: dict[int, bytes], slot: int) -> tuple[PIN_POLICY, TOUCH_POLICY]:
        try:
            pin_policy = PIN_POLICY(template[TAG_PIN_POLICY][0]) if TAG_PIN_POLICY in template else PIN_POLICY.DEFAULT
            touch = TOUCH_POLICY(template[TAG_TOUCH_POLICY][0]) if TAG_TOUCH_POLICY in template else TOUCH_POLICY.DEFAULT
        except (ValueError, IndexError):
            raise ApduError(SW.WRONG_DATA) from None
        if any(len(template.get(t, b"x")) != 1 for t in (TAG_PIN_POLICY, TAG_TOUCH_POLICY)):
            raise ApduError(SW.WRONG_DATA)
        if pin_policy == PIN_POLICY.DEFAULT:
            pin_policy = default_pin_policy(slot)
        if touch == TOUCH_POLICY.DEFAULT:
            touch = TOUCH_POLICY.NEVER
        return pin_policy, touch

    @staticmethod
    def _writable_key_slot(slot: int, *, generate: bool) -> None:
        if slot not in KEY_SLOTS or (generate and slot == SLOT.ATTESTATION):
            raise ApduError(SW.INCORRECT_P1P2)

    def generate_asymmetric_key_pair(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        self._writable_key_slot(cmd.p2, generate=True)
        self._require_mgmt()
        template = parse_dict(unwrap(cmd.data, TAG_CONTROL_REFERENCE),
                              allowed={TAG_ALGORITHM, TAG_PIN_POLICY, TAG_TOUCH_POLICY})
        alg_bytes = template.get(TAG_ALGORITHM, b"")
        if len(alg_bytes) != 1:
            raise ApduError(SW.WRONG_DATA)
        try:
            alg = ALGORITHM(alg_bytes[0])
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        pin_policy, touch = self._policies(template, cmd.p2)
        key = CardKey.generate(alg)
        new_state = self.state.clone()
        new_state.keys[cmd.p2] = SlotKey(key, pin_policy, touch, ORIGIN.GENERATED)
        self._commit(new_state)
        return tlv(TAG_PUBLIC_KEY, public_key_template(key))

    def import_asymmetric_key(self, cmd: CommandAPDU) -> bytes:
        self._writable_key_slot(cmd.p2, generate=False)
        self._require_mgmt()
        try:
            alg = ALGORITHM(cmd.p1)
        except ValueError:
            raise ApduError(SW.INCORRECT_P1P2) from None
        template = parse_dict(cmd.data, allowed={1, 2, 3, 4, 5, 6, 7, 8, TAG_PIN_POLICY, TAG_TOUCH_POLICY})
        pin_policy, touch = self._policies(template, cmd.p2)
        key = self._key_from_components(alg, {k: v for k, v in template.items() if k < 0x10})
        new_state = self.state.clone()
        new_state.keys[cmd.p2] = SlotKey(key, pin_policy, touch, ORIGIN.IMPORTED)
        self._commit(new_state)
        return b""

    @staticmethod
    def _key_from_components(alg: ALGORITHM, c: dict[int, bytes]) -> CardKey:
        try:
            if alg.is_rsa:
                if set(c) != {1, 2, 3, 4, 5}:
                    raise ApduError(SW.WRONG_DATA)
                p, q, dp, dq, qinv = (int.from_bytes(c[i], "big") for i in (1, 2, 3, 4, 5))
                private = rsa_key_from_primes(p, q, RSA_PUBLIC_EXPONENT, dp=dp, dq=dq, qinv=qinv)
            elif alg.is_ec:
                size = EC_FIELD_BYTES[alg]
                if set(c) != {6} or len(c[6]) != size:
                    raise ApduError(SW.WRONG_DATA)
                private = ec.derive_private_key(int.from_bytes(c[6], "big"), EC_CURVES[alg]())
            elif alg == ALGORITHM.ED25519:
                if set(c) != {7} or len(c[7]) != 32:
                    raise ApduError(SW.WRONG_DATA)
                private = ed25519.Ed25519PrivateKey.from_private_bytes(c[7])
            else:
                if set(c) != {8} or len(c[8]) != 32:
                    raise ApduError(SW.WRONG_DATA)
                private = x25519.X25519PrivateKey.from_private_bytes(c[8])
            return CardKey(private, alg)
        except ApduError:
            raise
        except ValueError:            # includes KeyLoadError (size mismatch) and non-invertible values
            raise ApduError(SW.WRONG_DATA) from None

    # -- Yubico vendor commands ----------------------------------------------
    def get_version(self, cmd: CommandAPDU) -> bytes:
        return bytes(FIRMWARE_VERSION)

    def get_serial(self, cmd: CommandAPDU) -> bytes:
        return self.state.serial.to_bytes(4, "big")

    def set_management_key(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0xFF or cmd.p2 not in (0xFF, 0xFE):
            raise ApduError(SW.INCORRECT_P1P2)
        self._require_mgmt()
        if len(cmd.data) < 3:
            raise ApduError(SW.WRONG_DATA)
        items = parse_tlv(cmd.data[1:])
        if len(items) != 1 or items[0][0] != SLOT.CARD_MANAGEMENT:
            raise ApduError(SW.WRONG_DATA)
        try:
            mgmt = check_management_key(cmd.data[0], items[0][1])
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        touch = TOUCH_POLICY.ALWAYS if cmd.p2 == 0xFE else TOUCH_POLICY.NEVER
        new_state = self.state.clone()
        new_state.management = ManagementKey(mgmt.algorithm, mgmt.key, touch)    # sealed at save
        self._commit(new_state)
        if new_state.management.is_default:
            log.warning("PIV card %d: management key set to the DEFAULT value", self.state.serial)
        return b""

    def reset(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 or cmd.p2:
            raise ApduError(SW.INCORRECT_P1P2)
        if not (self.state.pin.blocked and self.state.puk.blocked):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        old = self.state
        attestation = None
        entry = old.keys.get(SLOT.ATTESTATION)
        try:
            # Kept across the reset, sealed again for the new vault (F9 is PIN policy NEVER: always open).
            attestation = (SlotKey(entry.private(old.vault, self.card.session), entry.pin_policy,
                                   entry.touch_policy, entry.origin), old.objects[OBJECT_ID.YUBICO_ATTESTATION])
        except (AttributeError, KeyError, PermissionError, StorageError) as e:
            log.warning("PIV card %d reset: the attestation key cannot be kept (%s); a new one is made",
                        old.serial, e)
        fresh = PivState.new(serial=old.serial, attestation=attestation, device=old.vault.device,
                             kdf=self.card.options.kdf)
        self.clear_security_status()
        self._commit(fresh)
        log.warning("PIV card %d reset: keys, certificates and objects erased; PIN, PUK and management "
                    "key are the defaults again", old.serial)
        return b""

    def set_pin_retries(self, cmd: CommandAPDU) -> bytes:
        self._require_mgmt()
        if not self.pin_verified:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if not (1 <= cmd.p1 <= 15 and 1 <= cmd.p2 <= 15):
            raise ApduError(SW.INCORRECT_P1P2)
        dek = self._open(self.card.data_key)
        new_state = self.state.clone()
        # As on a YubiKey, PIN and PUK return to their default values.
        new_state.pin.set_max_tries(cmd.p1)
        new_state.pin.set(piv_pad(DEFAULT_PIN), is_default=True, dek=dek)
        new_state.puk.set_max_tries(cmd.p2)
        new_state.puk.set(piv_pad(DEFAULT_PUK), is_default=True, dek=dek)
        self._commit(new_state)
        self._pin_lost()
        return b""

    def get_metadata(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        ref = cmd.p2
        if ref in (KEY_REFERENCE.PIV_PIN, KEY_REFERENCE.PUK):
            slot = self.state.pin if ref == KEY_REFERENCE.PIV_PIN else self.state.puk
            return (tlv(TAG_META_ALGORITHM, b"\xff") + tlv(TAG_META_POLICY, b"\x00\x00")
                    + tlv(TAG_META_IS_DEFAULT, b"\x01" if slot.is_default else b"\x00")
                    + tlv(TAG_META_RETRIES, bytes([slot.max_tries, slot.tries_left])))
        if ref == SLOT.CARD_MANAGEMENT:
            m = self.state.management
            return (tlv(TAG_META_ALGORITHM, bytes([m.algorithm])) + tlv(TAG_META_POLICY, bytes([0, m.touch_policy]))
                    + tlv(TAG_META_IS_DEFAULT, b"\x01" if m.is_default else b"\x00"))
        if ref not in KEY_SLOTS:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        entry = self.state.keys.get(ref)
        if entry is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        return (tlv(TAG_META_ALGORITHM, bytes([entry.key.algorithm]))
                + tlv(TAG_META_POLICY, bytes([entry.pin_policy, entry.touch_policy]))
                + tlv(TAG_META_ORIGIN, bytes([entry.origin]))
                + tlv(TAG_META_PUBLIC_KEY, public_key_template(entry.key)))

    def attest(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        slot = cmd.p1
        if slot not in KEY_SLOTS or slot == SLOT.ATTESTATION:
            raise ApduError(SW.INCORRECT_P1P2)
        entry = self.state.keys.get(slot)
        if entry is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        if entry.origin != ORIGIN.GENERATED:
            raise ApduError(SW.WRONG_DATA)     # only keys generated on the card can be attested
        ca_key = self.state.keys.get(SLOT.ATTESTATION)
        ca_cert = objects.parse_certificate_object(self.state.objects.get(OBJECT_ID.YUBICO_ATTESTATION, b""))
        if ca_key is None or ca_cert is None or ca_key.key.algorithm == ALGORITHM.X25519:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        ca_private = self._open(lambda: ca_key.private(self.state.vault, self.card.session))
        cert = objects.make_attestation(ca_private, ca_cert, slot, entry.key.public_key, self.state.serial,
                                        entry.pin_policy, entry.touch_policy)
        return cert.public_bytes(serialization.Encoding.DER)

    def move_key(self, cmd: CommandAPDU) -> bytes:
        to_slot, from_slot = cmd.p1, cmd.p2
        if from_slot not in KEY_SLOTS or from_slot == SLOT.ATTESTATION:
            raise ApduError(SW.INCORRECT_P1P2)
        if to_slot != 0xFF and (to_slot not in KEY_SLOTS or to_slot in (SLOT.ATTESTATION, from_slot)):
            raise ApduError(SW.INCORRECT_P1P2)
        self._require_mgmt()
        if from_slot not in self.state.keys:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        new_state = self.state.clone()
        entry = new_state.keys.pop(from_slot)
        if to_slot != 0xFF:
            new_state.keys[to_slot] = entry
        self._commit(new_state)
        return b""

    _HANDLERS = {
        INS.VERIFY: verify,
        INS.CHANGE_REFERENCE_DATA: change_reference_data,
        INS.RESET_RETRY_COUNTER: reset_retry_counter,
        INS.GENERATE_ASYMMETRIC_KEY_PAIR: generate_asymmetric_key_pair,
        INS.GENERAL_AUTHENTICATE: general_authenticate,
        INS.GET_DATA: get_data,
        INS.PUT_DATA: put_data,
        INS.MOVE_KEY: move_key,
        INS.GET_METADATA: get_metadata,
        INS.GET_SERIAL: get_serial,
        INS.ATTEST: attest,
        INS.SET_PIN_RETRIES: set_pin_retries,
        INS.RESET: reset,
        INS.GET_VERSION: get_version,
        INS.IMPORT_ASYMMETRIC_KEY: import_asymmetric_key,
        INS.SET_MANAGEMENT_KEY: set_management_key,
    }


#: For the journal and `status`: what a touch is asked for.
_OPERATION_NAMES = {"rsa": "RSA private key operation", "ecdsa": "ECDSA signature", "ed25519": "Ed25519 signature",
                    "ecdh": "ECDH key agreement", "x25519": "X25519 key agreement"}


class PivCard(VaultCardMixin, AppletCard):
    """An emulated PIV card whose state lives in a `CardStore` directory."""

    # Reads of in-memory state; VERIFY (scrypt), crypto and writes go to the worker thread.
    QUICK_INS = frozenset({INS.SELECT, INS.GET_DATA, INS.GET_RESPONSE, INS.GET_VERSION, INS.GET_SERIAL,
                           INS.GET_METADATA})

    #: Monotonic clock for the CACHED touch policy (tests replace it).
    clock = staticmethod(time.monotonic)

    def __init__(self, store: CardStore, state: PivState, *, inserted: bool = True,
                 options: VaultOptions = DEFAULT_OPTIONS) -> None:
        self.store = store
        self.state = state
        self.options = options
        #: The unlocked data key while the PIN is verified (vault.VaultSession), else None.
        self.session = None
        #: When a person last confirmed an operation (CACHED touch policy); not cleared by a reset.
        self.last_touch = float("-inf")
        self.applet = PivApplet(self)
        super().__init__([self.applet], inserted=inserted)
        self._warn_defaults()

    # -- construction -------------------------------------------------------
    @classmethod
    def create(cls, store: CardStore, *, pin: str | bytes = DEFAULT_PIN, puk: str | bytes = DEFAULT_PUK,
               mgmt_key: bytes = DEFAULT_MANAGEMENT_KEY, mgmt_alg: int = DEFAULT_MANAGEMENT_ALGORITHM,
               serial: int | None = None, pin_tries: int = DEFAULT_TRIES, puk_tries: int = DEFAULT_TRIES,
               inserted: bool = True, options: VaultOptions = DEFAULT_OPTIONS) -> "PivCard":
        """Create a new card in `store` (refuses to overwrite an existing one); ValueError on bad arguments."""
        if store.exists():
            raise FileExistsError(f"a card already exists in {store.directory}")
        state = PivState.new(pin=pin, puk=puk, mgmt_key=mgmt_key, mgmt_alg=mgmt_alg, serial=serial,
                             pin_tries=pin_tries, puk_tries=puk_tries, device=store.device, kdf=options.kdf)
        store.save(state.to_dict())
        log.info("created PIV card %d in %s (%s)", state.serial, store.directory, store.device.describe())
        return cls(store, state, inserted=inserted, options=options)

    @classmethod
    def open(cls, store: CardStore, *, inserted: bool = True, options: VaultOptions = DEFAULT_OPTIONS) -> "PivCard":
        state = PivState.from_dict(store.load(), device=store.device, kdf=options.kdf)
        if state.migrated:
            save_migrated(store, state.to_dict(), options, f"PIV card {state.serial}")
            state.migrated = False
        return cls(store, state, inserted=inserted, options=options)

    @classmethod
    def from_directory(cls, path: Path, *, inserted: bool = True,
                       options: VaultOptions = DEFAULT_OPTIONS) -> "PivCard":
        """The daemon's constructor: open the card in `path`, creating a default one if absent."""
        store = CardStore(Path(path), options.device())
        if not store.exists():
            return cls.create(store, inserted=inserted, options=options)
        return cls.open(store, inserted=inserted, options=options)

    def _warn_defaults(self) -> None:
        s = self.state
        warn_if_unbound(s.vault.device, f"PIV card {s.serial}")
        if s.management.is_default:
            log.warning("PIV card %d uses the DEFAULT management key %s: anyone with access to the reader can "
                        "replace its keys and certificates. Change it (yubico-piv-tool -a set-mgm-key, "
                        "ykman piv access change-management-key).", s.serial, DEFAULT_MANAGEMENT_KEY.hex())
        if s.pin.is_default or s.puk.is_default:
            log.warning("PIV card %d still has the default PIN or PUK; change them", s.serial)

    # -- Card / AppletCard --------------------------------------------------
    def atr(self) -> bytes:
        return make_atr(ATR_HISTORICAL)

    def default_applet(self):
        # SP 800-73-4 Part 1 §2.2: the PIV application may be the default one; OpenSC tries GET DATA first.
        return self.applet

    def reset(self) -> None:
        super().reset()
        self.applet.clear_security_status()      # drops the data key (self.lock())

    def describe(self) -> dict:
        d = super().describe()
        d.update({"type": "piv", "serial": self.state.serial, "directory": str(self.store.directory)})
        return d


__all__ = ["PivApplet", "PivCard", "PivCardSide", "ATR_HISTORICAL", "public_key_template"]
