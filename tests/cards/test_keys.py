"""CardKey operations verified with cryptography, and key/certificate file loading."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ccidgadget.cards.keys import ALGORITHM, CardKey, KeyLoadError, load_key_and_cert


@pytest.fixture(scope="module")
def rsa_key():
    return CardKey.generate(ALGORITHM.RSA2048)


def pkcs1_block(digest_info: bytes, size: int) -> bytes:
    return b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info)) + b"\x00" + digest_info


SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def test_rsa_raw_sign_verifies(rsa_key):
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"hello")
    d = digest.finalize()
    sig = rsa_key.sign_raw_rsa(pkcs1_block(SHA256_PREFIX + d, 256))
    rsa_key.public_key.verify(sig, d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_rsa_raw_decrypt(rsa_key):
    ct = rsa_key.public_key.encrypt(b"secret", padding.PKCS1v15())
    block = rsa_key.decrypt_raw_rsa(ct)
    assert block[:2] == b"\x00\x02" and block.endswith(b"\x00secret")


def test_rsa_raw_rejects(rsa_key):
    with pytest.raises(ValueError):
        rsa_key.sign_raw_rsa(b"\x00" * 255)
    with pytest.raises(ValueError):
        rsa_key.sign_raw_rsa(b"\xff" * 256)           # not below n
    with pytest.raises(TypeError):
        rsa_key.sign_ecdsa(b"\x00" * 32)


@pytest.mark.parametrize("alg, curve, hashalg", [(ALGORITHM.ECCP256, ec.SECP256R1, hashes.SHA256),
                                                 (ALGORITHM.ECCP384, ec.SECP384R1, hashes.SHA384)])
def test_ecdsa_and_ecdh(alg, curve, hashalg):
    key = CardKey.generate(alg)
    h = hashes.Hash(hashalg())
    h.update(b"msg")
    d = h.finalize()
    key.public_key.verify(key.sign_ecdsa(d), d, ec.ECDSA(utils.Prehashed(hashalg())))
    # a SHA-1 hash (shorter than the field) verifies as SHA-1
    h1 = hashes.Hash(hashes.SHA1())
    h1.update(b"msg")
    d1 = h1.finalize()
    key.public_key.verify(key.sign_ecdsa(d1), d1, ec.ECDSA(utils.Prehashed(hashes.SHA1())))
    peer = ec.generate_private_key(curve())
    pt = peer.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert key.ecdh(pt) == peer.exchange(ec.ECDH(), key.public_key)
    with pytest.raises(ValueError):
        key.ecdh(pt[:-1])
    with pytest.raises(ValueError):
        key.ecdh(b"\x04" + b"\x01" * (len(pt) - 1))    # not on the curve
    assert key.public_point() == key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def test_25519():
    ed = CardKey.generate(ALGORITHM.ED25519)
    ed.public_key.verify(ed.sign_ed25519(b"message"), b"message")
    x = CardKey.generate(ALGORITHM.X25519)
    peer = x25519.X25519PrivateKey.generate()
    pub = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert x.x25519(pub) == peer.exchange(x.public_key)
    assert len(x.public_point()) == 32
    with pytest.raises(TypeError):
        x.sign_ed25519(b"m")


def test_pem_roundtrip(rsa_key):
    again = CardKey.from_pem(rsa_key.to_pem())
    assert again.algorithm == ALGORITHM.RSA2048 and again.matches(rsa_key.public_key)
    with pytest.raises(KeyLoadError):
        CardKey.from_pem(b"garbage")


def test_unsupported_types():
    with pytest.raises(KeyLoadError, match="RSA-1536"):
        CardKey(rsa.generate_private_key(65537, 1536))
    with pytest.raises(KeyLoadError, match="secp224r1"):
        CardKey(ec.generate_private_key(ec.SECP224R1()))
    with pytest.raises(KeyLoadError):
        CardKey(ec.generate_private_key(ec.SECP256R1()), ALGORITHM.ECCP384)


def _self_signed(key, cn="test"):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def material():
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    return key, _self_signed(key), _self_signed(ca_key, "ca")


def test_load_pem_bundle(tmp_path, material):
    key, cert, ca = material
    pem = (ca.public_bytes(serialization.Encoding.PEM)
           + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.BestAvailableEncryption(b"pw"))
           + cert.public_bytes(serialization.Encoding.PEM))
    f = tmp_path / "k.pem"
    f.write_bytes(pem)
    b = load_key_and_cert(f, "pw")
    assert b.key.algorithm == ALGORITHM.ECCP256 and b.certificate == cert and b.chain == [ca]
    with pytest.raises(KeyLoadError, match="give its password"):
        load_key_and_cert(f)
    with pytest.raises(KeyLoadError, match="wrong password"):
        load_key_and_cert(f, "nope")


def test_load_der_and_mismatch(tmp_path, material):
    key, cert, ca = material
    f = tmp_path / "k.der"
    f.write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    b = load_key_and_cert(f)
    assert b.certificate is None and b.key.matches(key.public_key())
    c = tmp_path / "c.der"
    c.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(KeyLoadError, match="no private key"):
        load_key_and_cert(c)
    assert load_key_and_cert(c, require_key=False).certificate == cert
    m = tmp_path / "m.pem"
    m.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) + ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyLoadError, match="matches"):
        load_key_and_cert(m)


def test_load_pkcs12(tmp_path, material):
    key, cert, ca = material
    f = tmp_path / "k.p12"
    f.write_bytes(pkcs12.serialize_key_and_certificates(
        b"x", key, cert, [ca], serialization.BestAvailableEncryption(b"secret")))
    b = load_key_and_cert(f, "secret")
    assert b.certificate == cert and b.chain == [ca]
    with pytest.raises(KeyLoadError, match="wrong password"):
        load_key_and_cert(f, "bad")
    with pytest.raises(KeyLoadError):
        load_key_and_cert(f)


def test_load_unsupported_and_missing(tmp_path):
    f = tmp_path / "k.pem"
    f.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert load_key_and_cert(f).key.algorithm == ALGORITHM.ED25519
    from cryptography.hazmat.primitives.asymmetric import dsa
    f.write_bytes(dsa.generate_private_key(2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeyLoadError, match="not supported"):
        load_key_and_cert(f)
    with pytest.raises(KeyLoadError, match="cannot read"):
        load_key_and_cert(tmp_path / "absent.pem")


def test_rsa_fast_path_matches_blinded_path(rsa_key):
    import os
    from ccidgadget.cards import keys
    for prefix, size in ((SHA256_PREFIX, 32), (bytes.fromhex("3021300906052b0e03021a05000414"), 20)):
        block = pkcs1_block(prefix + os.urandom(size), 256)
        assert keys._pkcs1_digest_info(block) is not None
        assert rsa_key.sign_raw_rsa(block) == rsa_key._rsa_private(block)
    # not a DigestInfo (e.g. a TLS 1.0 MD5+SHA1 block): the CRT path, still a valid raw operation
    block = pkcs1_block(os.urandom(36), 256)
    assert keys._pkcs1_digest_info(block) is None
    sig = rsa_key.sign_raw_rsa(block)
    n = rsa_key.public_key.public_numbers()
    assert pow(int.from_bytes(sig, "big"), n.e, n.n) == int.from_bytes(block, "big")
    assert keys._pkcs1_digest_info(b"\x00\x01\xff\x00" + SHA256_PREFIX + bytes(32)) is None   # short padding
