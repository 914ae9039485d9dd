# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenPGP card application, version 3.4 (cited as §x.y), as GnuPG and OpenSC use it.

`OpenPgpApplet` handles commands once `AppletCard` has reassembled command chains and will split
long answers with 61xx; `OpenPgpCard` is the card (ATR, storage, user presence).

Security status (volatile, §4.3): PW1 verified for PSO:CDS (mode 81; consumed by one signature
unless C4 says "valid for several"), PW1 verified for the other commands (mode 82), PW3 verified.
A failed VERIFY clears the status of that PW; a card reset clears all of them, and the MSE key
assignments and the certificate selected with SELECT DATA.

Keys at rest (cards/vault.py, docs/card-state-format.md): a successful VERIFY of any PW opens the
card's data key, which stays in memory (`OpenPgpCard.session`) exactly as long as some PW status
does: until the one signature PW1 81 allows, VERIFY P1=FF, a failed VERIFY, or the reset /
power-off / removal that clears PW1 82 and PW3.  The private keys are opened with it when used and
dropped with it.  CHANGE REFERENCE DATA and RESET RETRY COUNTER rewrap the data key only (the
resetting code opens it for that one command); GENERATE and key import (PW3) seal the new key to
the card key; TERMINATE DF / ACTIVATE FILE make a new vault.

Every state change is saved through the card's `CardStore` before the answer leaves; if saving
fails the command answers 6581 and the card keeps its old state (`_commit`).  PIN retry counters
are made durable before a PIN is compared (`PinSlot.verify`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, x25519

from ..applet import AppletCard, StatefulApplet, VaultCardMixin
from ..iso7816 import SW, ApduError, CommandAPDU, make_atr, verify_failed
from ..keys import ALGORITHM, EC_CURVES, EC_FIELD_BYTES, CardKey, rsa_key_from_primes
from ..presence import NO_PRESENCE, UserPresence
from ..storage import CardStore, StorageError
from ..vault import DEFAULT_OPTIONS, VaultOptions, save_migrated, warn_if_unbound
from ..tlv import parse_dict, parse_header_list, parse_tlv, tlv, unwrap
from .attributes import KeyAttributes, algorithm_information
from .constants import (ALGORITHM_ID, CERTIFICATE_OCCURRENCES, DEFAULT_PW1, DEFAULT_PW3, FEATURE_BUTTON, INS, KEY,
                        KEY_STATUS, KDF_ALGORITHM, KDF_HASH, KDF_TAG, LIFE_CYCLE, MAX_CERTIFICATE_LENGTH,
                        MAX_CHALLENGE_LENGTH, MAX_COMMAND_LENGTH, MAX_LANGUAGE_LENGTH, MAX_NAME_LENGTH,
                        MAX_RESPONSE_LENGTH, MAX_SPECIAL_DO_LENGTH, PRIVATE_KEY_TAG, PSO, PUBLIC_KEY_TAG,
                        PW, PW1_MIN_LENGTH, PW3_MIN_LENGTH, PW_MAX_LENGTH, RC_MIN_LENGTH, RSA_IMPORT_FORMAT,
                        SIGNATURE_COUNTER_MAX, TAG, UIF)
from .state import KDF_NONE, KeyEntry, OpenPgpState

log = logging.getLogger(__name__)

#: Extended capabilities byte 1 (§4.4.3.7): GET CHALLENGE 40, key import 20, PW status change 10,
#: private DOs 08, algorithm attributes change 04, KDF-DO 01.  No secure messaging (80) and no
#: PSO:DECIPHER/ENCIPHER with AES (02).
EXTENDED_CAPABILITY_FLAGS = 0x7D
#: Largest DigestInfo PSO:CDS / INTERNAL AUTHENTICATE take with RSA: 40 % of the modulus (§7.2.10).
RSA_INPUT_PERCENT = 40
#: GnuPG's ECDH for a Cv25519 key may carry the 0x40 "native point" prefix (scd/app-openpgp.c).
NATIVE_POINT_PREFIX = 0x40


def historical_bytes(life_cycle: LIFE_CYCLE = LIFE_CYCLE.OPERATIONAL) -> bytes:
    """ATR historical bytes = DO 5F52 (§6, ISO 7816-4 §8.1.1).

    00          category indicator: compact-TLV objects, then a 3-byte status indicator
    31 C1       card service data: selection by full and by partial DF name, no EF.DIR/EF.ATR, no MF
    73 C0 01 C0 card capabilities: DF selection by full/partial name; data coding byte 01;
                command chaining (80) and extended Lc/Le (40), no logical channels
    LCS 90 00   status indicator: life cycle (05 operational, 03 terminated), SW 9000
    GnuPG reads the capabilities from here (and the life cycle, for factory-reset).
    """
    return bytes([0x00, 0x31, 0xC1, 0x73, 0xC0, 0x01, 0xC0, life_cycle, 0x90, 0x00])


def public_key_template(key: CardKey) -> bytes:
    """The value of 7F49 (§7.2.14): 81 modulus 82 exponent, or 86 point (04‖X‖Y; raw 32 bytes for 25519)."""
    if key.algorithm.is_rsa:
        numbers = key.public_key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return tlv(PUBLIC_KEY_TAG.MODULUS, n) + tlv(PUBLIC_KEY_TAG.EXPONENT, e)
    return tlv(PUBLIC_KEY_TAG.POINT, key.public_point())


def _pkcs1_type1(data: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 block 00 01 FF.. 00 ‖ data (RFC 8017 §9.2 step 5)."""
    if len(data) > size * RSA_INPUT_PERCENT // 100 or len(data) > size - 11:
        raise ApduError(SW.WRONG_DATA, "input longer than 40 % of the modulus")
    return b"\x00\x01" + b"\xff" * (size - 3 - len(data)) + b"\x00" + data


class OpenPgpApplet(StatefulApplet):
    name = "OpenPGP"

    def __init__(self, card: "OpenPgpCard") -> None:
        self.card = card
        self.clear_security_status()

    @property
    def aid(self) -> bytes:       # the full 16-byte AID; SELECT sends its first 6 bytes
        return self.card.state.aid

    @property
    def state(self) -> OpenPgpState:
        return self.card.state

    # -- volatile state -------------------------------------------------------
    def clear_security_status(self) -> None:
        self.pw1_sign = False
        self.pw1_other = False
        self.pw3 = False
        self.card.lock()
        # MANAGE SECURITY ENVIRONMENT (§7.2.18): which key PSO:DECIPHER and INTERNAL AUTHENTICATE use.
        self.decipher_key = KEY.DEC
        self.authenticate_key = KEY.AUT
        self.certificate_occurrence = 0

    def deselect(self) -> None:
        self.clear_security_status()

    # -- keys at rest -------------------------------------------------------------
    def _status_changed(self) -> None:
        """The data key stays only while some PW is verified (§4.3)."""
        if not (self.pw1_sign or self.pw1_other or self.pw3):
            self.card.lock()

    def commit(self, new_state) -> None:
        new_state.finish_conversion()
        super().commit(new_state)

    def committed(self) -> None:
        if self.card.session is None:
            self.card.lock()        # a key generated or imported while locked leaves memory once sealed

    def _reference(self, which: str, value: bytes, what: str) -> bytes:
        """Check the PW `which` ("pw1", "pw3", "rc") with its retry counter; the data key it opens.

        A converted card's record that wraps no data key yet gets its wrap now (docs/card-state-format.md
        "Migration"), so the first VERIFY of that PW after the conversion costs a second scrypt."""
        slot = getattr(self.state, which)
        dek = self.check_reference(slot, value, what)
        if dek is None:
            try:
                new_state, dek = self.state.adopt_reference(which, value)
            except StorageError as e:
                log.error("OpenPGP card %08X: %s; %s refused", self.state.serial, e, what)
                raise ApduError(SW.MEMORY_FAILURE) from None
            self.commit(new_state)
            log.info("OpenPGP card %08X: %s now wraps the data key%s", self.state.serial, what,
                     "" if self.state.interim_data_key is None else
                     f" (still without: {', '.join(self.state.unwrapped_references())})")
        return dek

    _unlock = StatefulApplet.unlock_card
    _open = StatefulApplet.open_sealed

    def _data_key(self) -> bytes:
        """The data key of the unlocked card (PW3 verified implies it); 6982 while locked."""
        return self._open(self.card.data_key)

    def _private_key(self, key: KEY):
        self._entry(key)
        return self._open(lambda: self.state.private_key(key, self.card.session))

    # -- SELECT ---------------------------------------------------------------
    def select(self, cmd: CommandAPDU):
        fci = tlv(0x6F, tlv(0x84, self.state.aid))
        if self.state.terminated:
            return fci, SW.WARNING_NO_INFO | 0x85     # 6285: selected file in termination state
        return fci

    # -- dispatch ---------------------------------------------------------------
    def process(self, cmd: CommandAPDU):
        ins, handler = self.handler_for(cmd, INS, self._HANDLERS)
        if self.state.terminated and ins != INS.ACTIVATE_FILE:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)      # only ACTIVATE FILE revives it (§7.2.17)
        return handler(self, cmd)

    # -- access conditions ----------------------------------------------------------
    def _require_pw3(self) -> None:
        if not self.pw3:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _require_pw1_other(self) -> None:
        if not self.pw1_other:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    # -- KDF-DO (§4.3.2) -------------------------------------------------------------
    def _kdf_hash_length(self) -> int | None:
        """With KDF_ITERSALTED_S2K the host sends hashes of this length instead of PINs."""
        return kdf_hash_length(self.state.kdf)

    def _check_new_pw(self, value: bytes, minimum: int) -> None:
        hash_length = self._kdf_hash_length()
        if hash_length is not None:
            if len(value) != hash_length:
                raise ApduError(SW.WRONG_DATA, "with KDF the card takes a hash as the new PIN")
        elif not minimum <= len(value) <= PW_MAX_LENGTH:
            raise ApduError(SW.WRONG_DATA, "new PIN too short or too long")

    def _is_default(self, value: bytes, which: PW) -> bool:
        if self._kdf_hash_length() is not None:
            tags = parse_dict(self.state.kdf)
            tag = KDF_TAG.INITIAL_HASH_PW1 if which != PW.PW3 else KDF_TAG.INITIAL_HASH_PW3
            return tags.get(tag) == value
        return value == (DEFAULT_PW3 if which == PW.PW3 else DEFAULT_PW1).encode()

    # -- VERIFY (§7.2.2) -----------------------------------------------------------------
    def verify(self, cmd: CommandAPDU) -> bytes:
        try:
            which = PW(cmd.p2)
        except ValueError:
            raise ApduError(SW.REFERENCE_NOT_FOUND) from None
        if cmd.p1 == 0xFF:
            # §7.2.2: P1=FF resets the access status of the PW named in P2.
            if cmd.data:
                raise ApduError(SW.WRONG_LENGTH)
            self._set_status(which, False)
            self._status_changed()
            return b""
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        slot = self.state.pw3 if which == PW.PW3 else self.state.pw1
        if not cmd.data:
            # Empty VERIFY: 9000 if verified, else the tries left (63Cx) or blocked (6983).
            if slot.blocked:
                raise ApduError(SW.AUTH_METHOD_BLOCKED)
            if self._status(which):
                return b""
            raise verify_failed(slot.tries_left)
        self._set_status(which, False)
        try:
            # Any length counts as a try: GnuPG's factory-reset blocks the PINs with 32-byte values.
            dek = self._reference("pw3" if which == PW.PW3 else "pw1", cmd.data, which.name)
        except ApduError:
            self._status_changed()           # a failed VERIFY: the data key goes if no PW remains verified
            raise
        self._unlock(dek)
        self._set_status(which, True)
        return b""

    def _status(self, which: PW) -> bool:
        return {PW.PW1_SIGN: self.pw1_sign, PW.PW1_OTHER: self.pw1_other, PW.PW3: self.pw3}[which]

    def _set_status(self, which: PW, value: bool) -> None:
        if which == PW.PW1_SIGN:
            self.pw1_sign = value
        elif which == PW.PW1_OTHER:
            self.pw1_other = value
        else:
            self.pw3 = value

    # -- CHANGE REFERENCE DATA (§7.2.3) / RESET RETRY COUNTER (§7.2.4) ----------------------
    def change_reference_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.p2 not in (PW.PW1_SIGN, PW.PW3):
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        which = PW(cmd.p2)
        slot = self.state.pw3 if which == PW.PW3 else self.state.pw1
        # The data is old ‖ new: the card knows how long the current PW is.
        n = slot.length or 0
        old, new = cmd.data[:n], cmd.data[n:]
        self._check_new_pw(new, PW3_MIN_LENGTH if which == PW.PW3 else PW1_MIN_LENGTH)
        if slot.blocked:
            raise ApduError(SW.AUTH_METHOD_BLOCKED)
        name = "pw3" if which == PW.PW3 else "pw1"
        try:
            dek = self._reference(name, old, which.name)
        except ApduError:
            if which == PW.PW3:
                self.pw3 = False
            else:
                self.pw1_sign = self.pw1_other = False
            self._status_changed()
            raise
        # A PW change rewraps the data key only: nothing else is encrypted again.
        new_state = self.state.clone()
        new_state.set_reference(name, new, dek, is_default=self._is_default(new, which))
        self.commit(new_state)
        return b""

    def reset_retry_counter(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != PW.PW1_SIGN:
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.p1 == 0x00:
            # Resetting code ‖ new PW1.
            rc = self.state.rc
            if rc is None or rc.blocked:
                raise ApduError(SW.AUTH_METHOD_BLOCKED)
            n = rc.length or 0
            code, new = cmd.data[:n], cmd.data[n:]
            self._check_new_pw(new, PW1_MIN_LENGTH)
            # The resetting code opens the data key for this command only (it verifies no PW).
            dek = self._reference("rc", code, "resetting code")
        elif cmd.p1 == 0x02:
            self._require_pw3()
            new = cmd.data
            self._check_new_pw(new, PW1_MIN_LENGTH)
            dek = self._data_key()
        else:
            raise ApduError(SW.INCORRECT_P1P2)
        new_state = self.state.clone()
        new_state.set_reference("pw1", new, dek, is_default=self._is_default(new, PW.PW1_SIGN))
        self.commit(new_state)
        return b""

    # -- GET DATA (§7.2.6) / GET NEXT DATA (§7.2.7) / SELECT DATA (§7.2.5) -----------------
    def get_data(self, cmd: CommandAPDU) -> bytes:
        return self.read_data_object(cmd.p1p2)

    def get_next_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != TAG.CARDHOLDER_CERTIFICATE:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        if self.certificate_occurrence + 1 >= len(CERTIFICATE_OCCURRENCES):
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        self.certificate_occurrence += 1
        return self.read_data_object(TAG.CARDHOLDER_CERTIFICATE)

    def select_data(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != 0x04 or cmd.p1 >= len(CERTIFICATE_OCCURRENCES):
            raise ApduError(SW.INCORRECT_P1P2)
        # §7.2.5: 60 04 5C 02 7F 21; GnuPG before 2.2.28 left out the 60 wrapper (T5175).
        items = parse_tlv(cmd.data)
        if len(items) == 1 and items[0][0] == TAG.TAG_REFERENCE:
            items = parse_tlv(items[0][1])
        if len(items) != 1 or items[0][0] != TAG.TAG_LIST or items[0][1] != b"\x7f\x21":
            raise ApduError(SW.WRONG_DATA)
        self.certificate_occurrence = cmd.p1
        return b""

    def read_data_object(self, tag: int) -> bytes:
        s = self.state
        simple = {
            TAG.APPLICATION_IDENTIFIER: lambda: s.aid,
            TAG.LOGIN_DATA: lambda: s.login,
            TAG.URL: lambda: s.url,
            TAG.HISTORICAL_BYTES: lambda: historical_bytes(),
            TAG.NAME: lambda: s.name,
            TAG.LANGUAGE_PREFERENCE: lambda: s.language,
            TAG.SALUTATION: lambda: s.salutation,
            TAG.CARDHOLDER_RELATED_DATA: lambda: (tlv(TAG.NAME, s.name) + tlv(TAG.LANGUAGE_PREFERENCE, s.language)
                                                  + tlv(TAG.SALUTATION, s.salutation)),
            TAG.APPLICATION_RELATED_DATA: self._application_related_data,
            TAG.DISCRETIONARY_DATA_OBJECTS: self._discretionary_data_objects,
            TAG.EXTENDED_CAPABILITIES: self._extended_capabilities,
            TAG.PW_STATUS_BYTES: self._pw_status_bytes,
            TAG.FINGERPRINTS: lambda: b"".join(s.fingerprints.get(k, bytes(20)) for k in KEY),
            TAG.CA_FINGERPRINTS: lambda: b"".join(s.ca_fingerprints.get(i, bytes(20)) for i in (1, 2, 3)),
            TAG.GENERATION_TIMES: lambda: b"".join(s.generation_times.get(k, 0).to_bytes(4, "big") for k in KEY),
            TAG.KEY_INFORMATION: lambda: b"".join(bytes([k, s.key_status(k)]) for k in KEY),
            TAG.SECURITY_SUPPORT_TEMPLATE: lambda: tlv(TAG.DIGITAL_SIGNATURE_COUNTER, self._signature_counter()),
            TAG.DIGITAL_SIGNATURE_COUNTER: self._signature_counter,
            TAG.CARDHOLDER_CERTIFICATE: lambda: s.certificates.get(
                CERTIFICATE_OCCURRENCES[self.certificate_occurrence], b""),
            TAG.EXTENDED_LENGTH_INFORMATION: self._extended_length_information,
            TAG.GENERAL_FEATURE_MANAGEMENT: self._general_feature_management,
            TAG.KDF: lambda: s.kdf,
            TAG.ALGORITHM_INFORMATION: algorithm_information,
            TAG.PRIVATE_USE_1: lambda: s.private_dos.get(TAG.PRIVATE_USE_1, b""),
            TAG.PRIVATE_USE_2: lambda: s.private_dos.get(TAG.PRIVATE_USE_2, b""),
        }
        for key in KEY:
            simple[key.attributes_tag] = lambda key=key: s.attributes[key].encode()
            simple[key.uif_tag] = lambda key=key: self._uif_value(key)
        if tag in simple:
            return simple[tag]()
        if tag == TAG.PRIVATE_USE_3:
            self._require_pw1_other()
            return self._open(lambda: s.private_do(tag, self.card.session))
        if tag == TAG.PRIVATE_USE_4:
            self._require_pw3()
            return self._open(lambda: s.private_do(tag, self.card.session))
        raise ApduError(SW.REFERENCE_NOT_FOUND)

    def _application_related_data(self) -> bytes:
        # §4.4.1, 6E: AID, historical bytes, extended length info, general feature management, 73.
        return (tlv(TAG.APPLICATION_IDENTIFIER, self.state.aid) + tlv(TAG.HISTORICAL_BYTES, historical_bytes())
                + tlv(TAG.EXTENDED_LENGTH_INFORMATION, self._extended_length_information())
                + tlv(TAG.GENERAL_FEATURE_MANAGEMENT, self._general_feature_management())
                + tlv(TAG.DISCRETIONARY_DATA_OBJECTS, self._discretionary_data_objects()))

    def _discretionary_data_objects(self) -> bytes:
        tags = [TAG.EXTENDED_CAPABILITIES, TAG.ALGORITHM_ATTRIBUTES_SIG, TAG.ALGORITHM_ATTRIBUTES_DEC,
                TAG.ALGORITHM_ATTRIBUTES_AUT, TAG.PW_STATUS_BYTES, TAG.FINGERPRINTS, TAG.CA_FINGERPRINTS,
                TAG.GENERATION_TIMES, TAG.KEY_INFORMATION, TAG.UIF_SIG, TAG.UIF_DEC, TAG.UIF_AUT]
        return b"".join(tlv(t, self.read_data_object(t)) for t in tags)

    def _extended_capabilities(self) -> bytes:
        # §4.4.3.7, 10 bytes: flags, SM algorithm (none), max GET CHALLENGE, max cardholder
        # certificate, max special DO, PIN block 2 format (no), MSE for DEC/AUT (yes).
        return (bytes([EXTENDED_CAPABILITY_FLAGS, 0x00]) + MAX_CHALLENGE_LENGTH.to_bytes(2, "big")
                + MAX_CERTIFICATE_LENGTH.to_bytes(2, "big") + MAX_SPECIAL_DO_LENGTH.to_bytes(2, "big")
                + b"\x00\x01")

    @staticmethod
    def _extended_length_information() -> bytes:
        # §4.4.3.8: 02 02 <max command bytes> 02 02 <max response bytes>.
        return tlv(0x02, MAX_COMMAND_LENGTH.to_bytes(2, "big")) + tlv(0x02, MAX_RESPONSE_LENGTH.to_bytes(2, "big"))

    def _general_feature_management(self) -> bytes:
        # §4.4.3.9 / §4.1.3.2: 81 01 <features>; b6 (20) = a button for user interaction, which
        # we have only when a user-presence source is configured.
        return tlv(TAG.BUTTON, bytes([FEATURE_BUTTON if self.card.presence.available else 0x00]))

    def _pw_status_bytes(self) -> bytes:
        # §4.4.3.4: PW1 for one (00) or several (01) signatures; max lengths of PW1, RC, PW3
        # (UTF-8 format, bit 8 clear); retry counters of PW1, RC, PW3.
        s = self.state
        rc_tries = s.rc.tries_left if s.rc else 0
        return bytes([0x01 if s.pw1_valid_for_several else 0x00, PW_MAX_LENGTH, PW_MAX_LENGTH, PW_MAX_LENGTH,
                      s.pw1.tries_left, rc_tries, s.pw3.tries_left])

    def _signature_counter(self) -> bytes:
        return self.state.signature_counter.to_bytes(3, "big")

    def _uif_value(self, key: KEY) -> bytes:
        return bytes([self.state.uif.get(key, UIF.DISABLED), FEATURE_BUTTON])

    # -- PUT DATA (§7.2.8) ----------------------------------------------------------------
    def put_data(self, cmd: CommandAPDU) -> bytes:
        tag, value = cmd.p1p2, cmd.data
        writer = self._WRITERS.get(tag)
        if writer is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        if tag in (TAG.PRIVATE_USE_1, TAG.PRIVATE_USE_3):
            self._require_pw1_other()
        else:
            self._require_pw3()
        new_state = self.state.clone()
        if writer(self, new_state, tag, value) is False:
            return b""                       # nothing changed, nothing to save
        self.commit(new_state)
        self._status_changed()               # the KDF-DO clears every PW status
        return b""

    @staticmethod
    def _limit(value: bytes, maximum: int) -> None:
        if len(value) > maximum:
            raise ApduError(SW.WRONG_LENGTH if maximum else SW.WRONG_DATA)

    def _write_text(self, s: OpenPgpState, tag: int, value: bytes):
        limits = {TAG.NAME: MAX_NAME_LENGTH, TAG.LANGUAGE_PREFERENCE: MAX_LANGUAGE_LENGTH, TAG.SALUTATION: 1,
                  TAG.LOGIN_DATA: MAX_SPECIAL_DO_LENGTH, TAG.URL: MAX_SPECIAL_DO_LENGTH}
        self._limit(value, limits[tag])
        attr = {TAG.NAME: "name", TAG.LANGUAGE_PREFERENCE: "language", TAG.SALUTATION: "salutation",
                TAG.LOGIN_DATA: "login", TAG.URL: "url"}[tag]
        setattr(s, attr, bytes(value))

    def _write_private_do(self, s: OpenPgpState, tag: int, value: bytes):
        self._limit(value, MAX_SPECIAL_DO_LENGTH)
        if not s.put_private_do(tag, value):          # 0103/0104 are sealed to the card key
            return False

    def _write_attributes(self, s: OpenPgpState, tag: int, value: bytes):
        key = KEY(tag - 0xC0)
        attrs = KeyAttributes.parse(value, key)
        if attrs == s.attributes[key]:
            return False
        # §4.4.3.10: a key of the old kind no longer fits: it is deleted.
        s.attributes[key] = attrs
        if key in s.keys:
            log.info("OpenPGP card %08X: %s key deleted by the change to %s", s.serial, key.name, attrs.describe())
        s.forget_key(key)

    def _write_pw_status(self, s: OpenPgpState, tag: int, value: bytes):
        # Only the first byte can be changed (§4.4.3.4).
        if len(value) != 1 or value[0] not in (0, 1):
            raise ApduError(SW.WRONG_DATA)
        s.pw1_valid_for_several = value[0] == 1

    def _write_fingerprint(self, s: OpenPgpState, tag: int, value: bytes):
        if len(value) not in (0, 20):
            raise ApduError(SW.WRONG_LENGTH)
        if tag <= TAG.FINGERPRINT_AUT:
            # The fingerprint is part of the key's sealed identity: the key is sealed again (PW3 has
            # opened the data key).
            key = KEY(tag - 0xC6)
            self._open(lambda: s.set_fingerprint(key, value if any(value) else None, self.card.session))
        elif value and any(value):
            s.ca_fingerprints[tag - 0xC9] = bytes(value)
        else:
            s.ca_fingerprints.pop(tag - 0xC9, None)

    def _write_generation_time(self, s: OpenPgpState, tag: int, value: bytes):
        if len(value) not in (0, 4):
            raise ApduError(SW.WRONG_LENGTH)
        key = KEY(tag - 0xCD)
        t = int.from_bytes(value, "big")
        if t:
            s.generation_times[key] = t
        else:
            s.generation_times.pop(key, None)

    def _write_resetting_code(self, s: OpenPgpState, tag: int, value: bytes):
        if not value:
            s.rc = None                      # §4.3.4: deleted, its counter reads 0
            return
        self._check_new_pw(value, RC_MIN_LENGTH)
        s.set_reference("rc", value, self._data_key(), max_tries=s.pw1.max_tries)

    def _write_uif(self, s: OpenPgpState, tag: int, value: bytes):
        key = KEY(tag - 0xD5)
        if len(value) != 2 or value[1] != FEATURE_BUTTON:
            raise ApduError(SW.WRONG_DATA)
        try:
            mode = UIF(value[0])
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None
        current = s.uif.get(key, UIF.DISABLED)
        if current == UIF.PERMANENTLY_ENABLED and mode != UIF.PERMANENTLY_ENABLED:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "UIF is permanent until a factory reset")
        if mode != UIF.DISABLED and not self.card.presence.available:
            # 7F74 says there is no button: a flag that could never be satisfied is refused.
            log.warning("OpenPGP card %08X: UIF for the %s key refused: no user-presence source configured",
                        s.serial, key.name)
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if mode == current:
            return False
        if mode == UIF.DISABLED:
            s.uif.pop(key, None)
        else:
            s.uif[key] = mode

    def _write_kdf(self, s: OpenPgpState, tag: int, value: bytes):
        hash_length = kdf_hash_length(check_kdf(value))
        s.kdf = bytes(value) if hash_length is not None else KDF_NONE
        # §4.3.2 (and YubiKey, Gnuk): a new KDF-DO resets PW1 and PW3 to their initial values,
        # the hashes in 87/88 (kdf-setup puts there the hashes of 123456 / 12345678), and the
        # resetting code, whose old value no longer fits, is deleted.
        if hash_length is None:
            pw1, pw3 = DEFAULT_PW1.encode(), DEFAULT_PW3.encode()
        else:
            tags = parse_dict(value)
            pw1, pw3 = tags[KDF_TAG.INITIAL_HASH_PW1], tags[KDF_TAG.INITIAL_HASH_PW3]
        dek = self._data_key()
        s.set_reference("pw1", pw1, dek, is_default=True)
        s.set_reference("pw3", pw3, dek, is_default=True)
        s.rc = None
        self.pw1_sign = self.pw1_other = self.pw3 = False
        log.info("OpenPGP card %08X: KDF %s; PW1 and PW3 are their initial values again", s.serial,
                 "on" if hash_length else "off")

    def _write_certificate(self, s: OpenPgpState, tag: int, value: bytes):
        if len(value) > MAX_CERTIFICATE_LENGTH:
            raise ApduError(SW.WRONG_LENGTH)
        key = CERTIFICATE_OCCURRENCES[self.certificate_occurrence]
        if value:
            s.certificates[key] = bytes(value)
        elif s.certificates.pop(key, None) is None:
            return False

    _WRITERS = {
        TAG.NAME: _write_text, TAG.LANGUAGE_PREFERENCE: _write_text, TAG.SALUTATION: _write_text,
        TAG.LOGIN_DATA: _write_text, TAG.URL: _write_text,
        TAG.PRIVATE_USE_1: _write_private_do, TAG.PRIVATE_USE_2: _write_private_do,
        TAG.PRIVATE_USE_3: _write_private_do, TAG.PRIVATE_USE_4: _write_private_do,
        TAG.ALGORITHM_ATTRIBUTES_SIG: _write_attributes, TAG.ALGORITHM_ATTRIBUTES_DEC: _write_attributes,
        TAG.ALGORITHM_ATTRIBUTES_AUT: _write_attributes,
        TAG.PW_STATUS_BYTES: _write_pw_status,
        TAG.FINGERPRINT_SIG: _write_fingerprint, TAG.FINGERPRINT_DEC: _write_fingerprint,
        TAG.FINGERPRINT_AUT: _write_fingerprint, TAG.CA_FINGERPRINT_1: _write_fingerprint,
        TAG.CA_FINGERPRINT_2: _write_fingerprint, TAG.CA_FINGERPRINT_3: _write_fingerprint,
        TAG.GENERATION_TIME_SIG: _write_generation_time, TAG.GENERATION_TIME_DEC: _write_generation_time,
        TAG.GENERATION_TIME_AUT: _write_generation_time,
        TAG.RESETTING_CODE: _write_resetting_code,
        TAG.UIF_SIG: _write_uif, TAG.UIF_DEC: _write_uif, TAG.UIF_AUT: _write_uif,
        TAG.KDF: _write_kdf,
        TAG.CARDHOLDER_CERTIFICATE: _write_certificate,
    }

    # -- PUT DATA odd: key import (§7.2.8, §4.4.3.12) ------------------------------------------
    def put_data_odd(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0x3FFF:
            raise ApduError(SW.INCORRECT_P1P2)
        self._require_pw3()
        key, components = parse_key_import(cmd.data)
        attrs = self.state.attributes[key]
        card_key = key_from_components(attrs, components)
        new_state = self.state.clone()
        new_state.forget_key(key)
        new_state.keys[key] = KeyEntry(card_key, KEY_STATUS.IMPORTED)
        self.commit(new_state)
        log.info("OpenPGP card %08X: %s key imported (%s)", self.state.serial, key.name, attrs.describe())
        return b""

    # -- GENERATE ASYMMETRIC KEY PAIR (§7.2.14) ----------------------------------------------
    def generate_asymmetric_key_pair(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 not in (0x80, 0x81) or cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        key = _crt_key(cmd.data)
        if cmd.p1 == 0x81:                   # read the public key
            entry = self.state.keys.get(key)
            if entry is None:
                raise ApduError(SW.REFERENCE_NOT_FOUND)
            return tlv(TAG.PUBLIC_KEY, public_key_template(entry.key))
        self._require_pw3()
        attrs = self.state.attributes[key]
        card_key = CardKey.generate(attrs.key_algorithm)
        new_state = self.state.clone()
        new_state.forget_key(key)
        new_state.keys[key] = KeyEntry(card_key, KEY_STATUS.GENERATED)
        self.commit(new_state)
        log.info("OpenPGP card %08X: %s key generated (%s)", self.state.serial, key.name, attrs.describe())
        return tlv(TAG.PUBLIC_KEY, public_key_template(card_key))

    # -- PSO:CDS (§7.2.10), PSO:DECIPHER (§7.2.11), INTERNAL AUTHENTICATE (§7.2.13) -----------
    def perform_security_operation(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 == PSO.COMPUTE_DIGITAL_SIGNATURE:
            return self._compute_digital_signature(cmd.data)
        if cmd.p1p2 == PSO.DECIPHER:
            return self._decipher(cmd.data)
        if cmd.p1p2 == PSO.ENCIPHER:
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED)      # AES (C0 bit 2) is not offered
        raise ApduError(SW.INCORRECT_P1P2)

    def _entry(self, key: KEY) -> KeyEntry:
        entry = self.state.keys.get(key)
        if entry is None:
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        return entry

    def _confirm(self, key: KEY, what: str) -> None:
        """UIF (§4.4.3.6): ask for the button before using the key; 6982 when nobody confirms."""
        if self.state.uif.get(key, UIF.DISABLED) == UIF.DISABLED:
            return
        if not self.card.presence.confirm(f"OpenPGP {what}"):
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    def _compute_digital_signature(self, data: bytes) -> bytes:
        if not self.pw1_sign:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        sign = _signer(self._private_key(KEY.SIG), data)
        self._confirm(KEY.SIG, "sign")
        signature = sign()
        new_state = self.state.clone()
        new_state.signature_counter = min(new_state.signature_counter + 1, SIGNATURE_COUNTER_MAX)
        self.commit(new_state)               # the counter is honest, or no signature leaves
        if not self.state.pw1_valid_for_several:
            self.pw1_sign = False
            self._status_changed()
        return signature

    def internal_authenticate(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0x0000:
            raise ApduError(SW.INCORRECT_P1P2)
        self._require_pw1_other()
        key = self.authenticate_key
        sign = _signer(self._private_key(key), cmd.data)
        self._confirm(key, "authenticate")
        return sign()

    def _decipher(self, data: bytes) -> bytes:
        self._require_pw1_other()
        key = self.decipher_key
        card_key = self._private_key(key)
        if card_key.algorithm.is_rsa:
            size = card_key.key_size // 8
            # Padding indicator 00, then the cryptogram; 02 would be AES, which is not offered.
            if len(data) != 1 + size or data[0] != 0x00:
                raise ApduError(SW.WRONG_DATA)
            self._confirm(key, "decipher")
            try:
                return card_key.private_key.decrypt(bytes(data[1:]), padding.PKCS1v15())
            except ValueError:
                raise ApduError(SW.WRONG_DATA) from None
        point = _ecdh_point(data)
        if card_key.algorithm == ALGORITHM.X25519:
            if len(point) == 33 and point[0] == NATIVE_POINT_PREFIX:
                point = point[1:]
            agree = card_key.x25519
        elif card_key.algorithm.is_ec:
            agree = card_key.ecdh
        else:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "this key cannot decipher")
        self._confirm(key, "decipher")
        try:
            return agree(point)
        except ValueError:
            raise ApduError(SW.WRONG_DATA) from None

    # -- MANAGE SECURITY ENVIRONMENT (§7.2.18) -------------------------------------------------
    def manage_security_environment(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x41 or cmd.p2 not in (KEY.DEC.crt, KEY.AUT.crt):
            raise ApduError(SW.INCORRECT_P1P2)
        ref = parse_dict(cmd.data, allowed={TAG.KEY_REFERENCE}).get(TAG.KEY_REFERENCE, b"")
        if len(ref) != 1 or ref[0] not in (KEY.DEC, KEY.AUT):
            raise ApduError(SW.WRONG_DATA)
        if cmd.p2 == KEY.DEC.crt:            # B8: the key PSO:DECIPHER uses
            self.decipher_key = KEY(ref[0])
        else:                                # A4: the key INTERNAL AUTHENTICATE uses
            self.authenticate_key = KEY(ref[0])
        return b""

    # -- GET CHALLENGE (§7.2.15) -------------------------------------------------------------
    def get_challenge(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0 or cmd.data:
            raise ApduError(SW.INCORRECT_P1P2 if cmd.p1p2 else SW.WRONG_LENGTH)
        if cmd.le is None or cmd.le > MAX_CHALLENGE_LENGTH:
            raise ApduError(SW.WRONG_LENGTH)
        return os.urandom(cmd.le)

    # -- TERMINATE DF (§7.2.16) / ACTIVATE FILE (§7.2.17) -------------------------------------
    def terminate_df(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0:
            raise ApduError(SW.INCORRECT_P1P2)
        if not (self.pw3 or self.state.pw3.blocked):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        # Keys and PINs are gone at once; ACTIVATE FILE brings the card back with the defaults.
        terminated = self.state.factory_reset()
        terminated.terminated = True
        self.commit(terminated)
        self.clear_security_status()
        log.warning("OpenPGP card %08X terminated: keys, PINs and data objects erased", self.state.serial)
        return b""

    def activate_file(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1p2 != 0:
            raise ApduError(SW.INCORRECT_P1P2)
        if not self.state.terminated:
            return b""                       # an operational card stays as it is
        fresh = self.state.factory_reset()
        self.commit(fresh)
        self.clear_security_status()
        log.warning("OpenPGP card %08X activated with factory defaults (PW1 %s, PW3 %s)",
                    self.state.serial, "123456", "12345678")
        return b""

    _HANDLERS = {
        INS.SELECT_DATA: select_data,
        INS.GET_DATA: get_data,
        INS.GET_NEXT_DATA: get_next_data,
        INS.VERIFY: verify,
        INS.CHANGE_REFERENCE_DATA: change_reference_data,
        INS.RESET_RETRY_COUNTER: reset_retry_counter,
        INS.PUT_DATA: put_data,
        INS.PUT_DATA_ODD: put_data_odd,
        INS.GENERATE_ASYMMETRIC_KEY_PAIR: generate_asymmetric_key_pair,
        INS.PERFORM_SECURITY_OPERATION: perform_security_operation,
        INS.INTERNAL_AUTHENTICATE: internal_authenticate,
        INS.GET_CHALLENGE: get_challenge,
        INS.MANAGE_SECURITY_ENVIRONMENT: manage_security_environment,
        INS.TERMINATE_DF: terminate_df,
        INS.ACTIVATE_FILE: activate_file,
    }


# -- helpers shared by the applet and offline provisioning ----------------------------------------

def check_kdf(value: bytes) -> bytes:
    """Validate a KDF-DO (§4.3.2) as `kdf-setup` writes it; return it or raise 6A80."""
    tags = parse_dict(value, allowed=set(KDF_TAG))
    alg = tags.get(KDF_TAG.ALGORITHM, b"")
    if alg == bytes([KDF_ALGORITHM.NONE]):
        if set(tags) != {KDF_TAG.ALGORITHM}:
            raise ApduError(SW.WRONG_DATA, "KDF none takes no parameters")
        return value
    if alg != bytes([KDF_ALGORITHM.KDF_ITERSALTED_S2K]):
        raise ApduError(SW.WRONG_DATA, "unknown KDF")
    try:
        hash_alg = KDF_HASH(tags[KDF_TAG.HASH_ALGORITHM][0]) if len(tags.get(KDF_TAG.HASH_ALGORITHM, b"")) == 1 \
            else None
    except ValueError:
        hash_alg = None
    if hash_alg is None:
        raise ApduError(SW.WRONG_DATA, "unknown KDF hash")
    if len(tags.get(KDF_TAG.ITERATION_COUNT, b"")) != 4 or len(tags.get(KDF_TAG.SALT_PW1, b"")) != 8:
        raise ApduError(SW.WRONG_DATA, "KDF iteration count and PW1 salt are required")
    for salt in (KDF_TAG.SALT_RC, KDF_TAG.SALT_PW3):
        if salt in tags and len(tags[salt]) != 8:
            raise ApduError(SW.WRONG_DATA, "KDF salts are 8 bytes")
    for initial in (KDF_TAG.INITIAL_HASH_PW1, KDF_TAG.INITIAL_HASH_PW3):
        if len(tags.get(initial, b"")) != hash_alg.digest_size:
            raise ApduError(SW.WRONG_DATA, "KDF-DO needs the initial PW1 and PW3 hashes")
    if len(value) > MAX_SPECIAL_DO_LENGTH:
        raise ApduError(SW.WRONG_LENGTH)
    return value


def kdf_hash_length(kdf: bytes) -> int | None:
    """Length of the hashes the host sends as PWs, or None when KDF is off."""
    tags = parse_dict(kdf)
    if tags.get(KDF_TAG.ALGORITHM) != bytes([KDF_ALGORITHM.KDF_ITERSALTED_S2K]):
        return None
    return KDF_HASH(tags[KDF_TAG.HASH_ALGORITHM][0]).digest_size


def _crt_key(data: bytes) -> KEY:
    """The key a control reference template names: B6/B8/A4 with no value or 84 01 <ref> (§7.2.14)."""
    items = parse_tlv(data)
    if len(items) != 1:
        raise ApduError(SW.WRONG_DATA)
    tag, value = items[0]
    try:
        key = KEY.from_crt(tag)
    except ValueError:
        raise ApduError(SW.WRONG_DATA) from None
    if value and value != bytes([0x84, 0x01, key]):
        raise ApduError(SW.WRONG_DATA)
    return key


def parse_key_import(data: bytes) -> tuple[KEY, dict[int, bytes]]:
    """4D { CRT, 7F48 header list, 5F48 concatenated values } → (key, {tag: value}) (§4.4.3.12)."""
    try:
        items = parse_tlv(unwrap(data, TAG.EXTENDED_HEADER_LIST))
    except ApduError:
        raise ApduError(SW.WRONG_DATA) from None
    if len(items) != 3 or items[1][0] != TAG.CARDHOLDER_PRIVATE_KEY_TEMPLATE \
            or items[2][0] != TAG.CARDHOLDER_PRIVATE_KEY:
        raise ApduError(SW.WRONG_DATA, "expected CRT, 7F48 and 5F48")
    key = _crt_key(tlv(*items[0]))
    headers = parse_header_list(items[1][1])
    values = items[2][1]
    if sum(n for _, n in headers) != len(values):
        raise ApduError(SW.WRONG_DATA, "5F48 does not hold what 7F48 lists")
    components: dict[int, bytes] = {}
    offset = 0
    for tag, n in headers:
        if tag not in set(PRIVATE_KEY_TAG) or tag in components:
            raise ApduError(SW.WRONG_DATA, f"unexpected private key tag {tag:X}")
        components[tag] = values[offset:offset + n]
        offset += n
    return key, components


def key_from_components(attrs: KeyAttributes, c: dict[int, bytes]) -> CardKey:
    """Build the private key from imported components, checked against the slot's attributes."""
    T = PRIVATE_KEY_TAG
    try:
        if attrs.algorithm_id == ALGORITHM_ID.RSA:
            required = {T.E, T.P, T.Q}
            if attrs.rsa_import_format in (RSA_IMPORT_FORMAT.CRT, RSA_IMPORT_FORMAT.CRT_WITH_MODULUS):
                required |= {T.PQ, T.DP1, T.DQ1}
            if not required <= set(c) or set(c) - required - {T.N, T.PQ, T.DP1, T.DQ1}:
                raise ApduError(SW.WRONG_DATA, "RSA components do not match the import format")
            if len(c[T.E]) > (attrs.rsa_exponent_bits + 7) // 8:
                raise ApduError(SW.WRONG_DATA, "public exponent longer than the attributes allow")
            num = {t: int.from_bytes(v, "big") for t, v in c.items()}
            private = rsa_key_from_primes(num[T.P], num[T.Q], num[T.E], dp=num.get(T.DP1), dq=num.get(T.DQ1),
                                          qinv=num.get(T.PQ))
            if private.key_size != attrs.rsa_bits:
                raise ApduError(SW.WRONG_DATA, f"key is RSA-{private.key_size}, the attributes say {attrs.rsa_bits}")
            if T.N in c and num[T.N] != private.public_key().public_numbers().n:
                raise ApduError(SW.WRONG_DATA, "modulus does not match the primes")
            return CardKey(private)
        if set(c) - {T.P, T.PUBLIC_KEY} or T.P not in c:
            raise ApduError(SW.WRONG_DATA, "ECC import takes the private key (92) and maybe the public key (99)")
        alg = attrs.key_algorithm
        d = c[T.P]
        if alg in (ALGORITHM.ED25519, ALGORITHM.X25519):
            if len(d) > 32:
                raise ApduError(SW.WRONG_DATA)
            d = d.rjust(32, b"\x00")
            if alg == ALGORITHM.ED25519:
                private = ed25519.Ed25519PrivateKey.from_private_bytes(d)
            else:
                # OpenPGP keeps the Cv25519 secret as a big-endian MPI: reverse it to X25519's
                # little-endian scalar (RFC 7748 §5).
                private = x25519.X25519PrivateKey.from_private_bytes(d[::-1])
        else:
            size = EC_FIELD_BYTES[alg]
            if len(d) > size:
                raise ApduError(SW.WRONG_DATA)
            private = ec.derive_private_key(int.from_bytes(d, "big"), EC_CURVES[alg]())
        card_key = CardKey(private, alg)
        public = c.get(T.PUBLIC_KEY)
        if public:
            if alg in (ALGORITHM.ED25519, ALGORITHM.X25519) and len(public) == 33 \
                    and public[0] == NATIVE_POINT_PREFIX:
                public = public[1:]
            if public != card_key.public_point():
                raise ApduError(SW.WRONG_DATA, "public key does not match the private key")
        return card_key
    except ApduError:
        raise
    except (ValueError, TypeError):
        raise ApduError(SW.WRONG_DATA) from None


def _signer(key: CardKey, data: bytes):
    """Check the input for `key` now; return the signing operation to run after confirmation."""
    alg = key.algorithm
    if alg.is_rsa:
        block = _pkcs1_type1(bytes(data), key.key_size // 8)
        return lambda: key.sign_raw_rsa(block)
    if alg.is_ec:
        if not 1 <= len(data) <= 64:
            raise ApduError(SW.WRONG_DATA, "ECDSA takes a hash")
        return lambda: key.sign_ecdsa_raw(data)
    if alg == ALGORITHM.ED25519:
        return lambda: key.sign_ed25519(data)   # EdDSA signs the whole message (§7.2.10)
    raise ApduError(SW.CONDITIONS_NOT_SATISFIED, "this key cannot sign")


def _ecdh_point(data: bytes) -> bytes:
    """A6 { 7F49 { 86 <point> } } (§7.2.11)."""
    try:
        inner = unwrap(unwrap(data, TAG.CIPHER), TAG.PUBLIC_KEY)
        point = parse_dict(inner, allowed={PUBLIC_KEY_TAG.POINT})[PUBLIC_KEY_TAG.POINT]
    except (ApduError, KeyError):
        raise ApduError(SW.WRONG_DATA) from None
    return point


class OpenPgpCard(VaultCardMixin, AppletCard):
    """An emulated OpenPGP card whose state lives in a `CardStore` directory."""

    # Reads of in-memory state; PIN checks (scrypt), crypto and writes go to the worker thread.
    QUICK_INS = frozenset({INS.SELECT, INS.GET_DATA, INS.GET_NEXT_DATA, INS.SELECT_DATA, INS.GET_RESPONSE})

    def __init__(self, store: CardStore, state: OpenPgpState, *, inserted: bool = True,
                 presence: UserPresence = NO_PRESENCE, options: VaultOptions = DEFAULT_OPTIONS) -> None:
        self.store = store
        self.state = state
        self.options = options
        #: The unlocked data key while some PW is verified (vault.VaultSession), else None.
        self.session = None
        self.applet = OpenPgpApplet(self)
        super().__init__([self.applet], inserted=inserted)
        self.presence = presence
        warn_if_unbound(state.vault.device, f"OpenPGP card {state.serial:08X}")
        if state.interim_data_key is not None:
            log.warning("OpenPGP card %08X: converted from a state without keys at rest; until %s have each "
                        "been verified once, its data key is also sealed to the device key only",
                        state.serial, ", ".join(n.upper() for n in state.unwrapped_references()))
        if state.pw3.is_default:
            log.warning("OpenPGP card %08X still has the default admin PIN (PW3); change it "
                        "(gpg --card-edit, admin, passwd)", state.serial)

    # -- construction -------------------------------------------------------
    @classmethod
    def create(cls, store: CardStore, *, pw1: str | bytes = DEFAULT_PW1, pw3: str | bytes = DEFAULT_PW3,
               serial: int | None = None, inserted: bool = True, presence: UserPresence = NO_PRESENCE,
               options: VaultOptions = DEFAULT_OPTIONS) -> "OpenPgpCard":
        """Create a new card in `store` (refuses to overwrite one); ValueError on bad arguments."""
        if store.exists():
            raise FileExistsError(f"a card already exists in {store.directory}")
        state = OpenPgpState.new(pw1=pw1, pw3=pw3, serial=serial, device=store.device, kdf_cost=options.kdf)
        store.save(state.to_dict())
        log.info("created OpenPGP card %08X in %s (%s)", state.serial, store.directory, store.device.describe())
        return cls(store, state, inserted=inserted, presence=presence, options=options)

    @classmethod
    def open(cls, store: CardStore, *, inserted: bool = True, presence: UserPresence = NO_PRESENCE,
             options: VaultOptions = DEFAULT_OPTIONS) -> "OpenPgpCard":
        """Open the card in `store`; a state without keys at rest is converted first (one atomic save)."""
        state = OpenPgpState.from_dict(store.load(), device=store.device, kdf_cost=options.kdf)
        if state.migrated:
            save_migrated(store, state.to_dict(), options, f"OpenPGP card {state.serial:08X}")
            state.migrated = False
        return cls(store, state, inserted=inserted, presence=presence, options=options)

    @classmethod
    def from_directory(cls, path: Path, *, inserted: bool = True, presence: UserPresence = NO_PRESENCE,
                       options: VaultOptions = DEFAULT_OPTIONS) -> "OpenPgpCard":
        """The daemon's constructor: open the card in `path`, creating a default one if absent."""
        store = CardStore(Path(path), options.device())
        if not store.exists():
            return cls.create(store, inserted=inserted, presence=presence, options=options)
        return cls.open(store, inserted=inserted, presence=presence, options=options)

    def atr(self) -> bytes:
        return make_atr(historical_bytes(LIFE_CYCLE.TERMINATED if self.state.terminated
                                         else LIFE_CYCLE.OPERATIONAL))

    def default_applet(self):
        return self.applet

    def reset(self) -> None:
        super().reset()
        self.applet.clear_security_status()

    def describe(self) -> dict:
        d = super().describe()
        d.update({"type": "openpgp", "serial": f"{self.state.serial:08X}", "directory": str(self.store.directory)})
        return d


__all__ = ["OpenPgpApplet", "OpenPgpCard", "historical_bytes", "public_key_template", "check_kdf",
           "kdf_hash_length", "parse_key_import", "key_from_components"]
