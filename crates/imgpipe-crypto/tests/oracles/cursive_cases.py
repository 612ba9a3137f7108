#!/usr/bin/env python3
"""Differential oracle for imgpipe's image-signature verifier: builds keys, certificates,
a small PKI, an image and tampered variants, signs them (python-cryptography and the
documented `openssl dgst ... -sigopt rsa_padding_mode:pss` CLI recipe), runs the REAL
cursive on every case the way Nova does (get_verifier -> verify_certificate -> update ->
verify), and writes OUT/cases.json with cursive's observed outcome.

Adapted from the project's shared/oracles/cursive_vectors.py. Certificates reach cursive
through castellan's own Barbican conversion code (PEM secret -> castellan X509 -> DER),
with a fake key-manager transport. Nothing here decides what imgpipe should do: the Rust
test (tests/signature_cursive.rs) maps cursive's observed outcome to imgpipe's and lists
the deliberate differences.

Also writes OUT/base64.json: strings and what CPython's base64.b64decode (the decoder
cursive uses via oslo_serialization) returns for each.

Usage: cursive_cases.py OUT_DIR [--size N]
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import types
import uuid

import cryptography
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.x509.oid import NameOID

import castellan.key_manager as castellan_key_manager
from castellan.common import exception as castellan_exc
from castellan.key_manager.barbican_key_manager import BarbicanKeyManager
from cursive import certificate_utils, signature_utils
from cursive import exception as cursive_exc

HASHES = {'SHA-224': hashes.SHA224, 'SHA-256': hashes.SHA256,
          'SHA-384': hashes.SHA384, 'SHA-512': hashes.SHA512}
OPENSSL_DGST = {'SHA-224': '-sha224', 'SHA-256': '-sha256',
                'SHA-384': '-sha384', 'SHA-512': '-sha512'}
CHUNK = 65536
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def uid(name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, 'imgpipe-sig/' + name))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def make_image(size):
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b'imgpipe-sig:%d' % i).digest()
        i += 1
    return bytes(out[:size])


def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def build_cert(subject_cn, pub, issuer_cn, issuer_key, *, ca=False, pathlen=None,
               key_cert_sign=None, not_before=None, not_after=None, add_bc=True,
               add_ku=True, pss=False):
    if key_cert_sign is None:
        key_cert_sign = ca
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
         .public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before or NOW - DAY)
         .not_valid_after(not_after or NOW + 365 * DAY))
    if add_bc:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen), critical=True)
    if add_ku:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
    h = hashes.SHA384() if isinstance(issuer_key, ec.EllipticCurvePrivateKey) else hashes.SHA256()
    if pss:
        return b.sign(issuer_key, hashes.SHA256(), rsa_padding=padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH))
    return b.sign(issuer_key, h)


def sign_crypto(key, data, hash_name, *, salt=None, mgf_hash=None, pkcs1v15=False,
                raw=False):
    h = HASHES[hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        if pkcs1v15:
            return key.sign(data, padding.PKCS1v15(), h)
        mgf_algs = dict(HASHES, **{'SHA-1': hashes.SHA1})
        mgf = padding.MGF1(mgf_algs[mgf_hash]() if mgf_hash else h)
        return key.sign(data, padding.PSS(
            mgf=mgf, salt_length=padding.PSS.MAX_LENGTH if salt is None else salt), h)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(data, ec.ECDSA(h))
        n = (key.curve.key_size + 7) // 8
    else:
        der = key.sign(data, h)
        n = (key.parameters().parameter_numbers().q.bit_length() + 7) // 8
    if raw:  # IEEE P1363 r||s instead of DER
        r, s = asym_utils.decode_dss_signature(der)
        return r.to_bytes(n, 'big') + s.to_bytes(n, 'big')
    return der


def openssl(*args):
    subprocess.run(['openssl'] + list(args), check=True, capture_output=True)


def sign_openssl(key_path, image_path, hash_name, sigopts, tmpdir):
    """The documented CLI recipe (glance doc/source/user/signature.rst)."""
    sig_path = os.path.join(tmpdir, 'tmp.sig')
    cmd = ['dgst', OPENSSL_DGST[hash_name], '-sign', key_path]
    for o in sigopts:
        cmd += ['-sigopt', o]
    openssl(*(cmd + ['-out', sig_path, image_path]))
    with open(sig_path, 'rb') as f:
        sig = f.read()
    os.unlink(sig_path)
    return sig


def b64(sig):
    return base64.b64encode(sig).decode('ascii')


class FakeBarbican(object):
    """uuid -> secret; get() goes through castellan's real conversion code."""

    def __init__(self):
        self.secrets = {}
        self._km = object.__new__(BarbicanKeyManager)

    def add(self, name, payload, secret_type='certificate', behaviour=None):
        u = uid(name)
        self.secrets[u] = dict(name=name, secret_type=secret_type, payload=payload,
                               behaviour=behaviour)
        return u

    def get(self, context, managed_object_id, metadata_only=False):
        s = self.secrets.get(managed_object_id)
        if s is None:
            raise castellan_exc.ManagedObjectNotFoundError(uuid=managed_object_id)
        if s['behaviour'] == 'error':
            raise castellan_exc.KeyManagerError(reason='simulated Barbican HTTP 503')
        secret = types.SimpleNamespace(
            secret_type=s['secret_type'], payload=s['payload'],
            secret_ref='https://barbican.example:9311/v1/secrets/' + managed_object_id,
            created=None, algorithm=None, bit_length=None, name=s['name'], consumers=[])
        return self._km._get_castellan_object(secret, metadata_only)


def run_cursive(case, outdir, by_name):
    """Nova's order: _get_verifier, then _verify_certs, then stream + verify."""
    p = case['properties']
    uu = lambda n: None if n is None else by_name.get(n, uid('missing:' + n))
    cert_uuid = uu(p.get('img_signature_certificate_uuid'))
    stage = 'get_verifier'
    try:
        verifier = signature_utils.get_verifier(
            context=None,
            img_signature_certificate_uuid=cert_uuid,
            img_signature_hash_method=p.get('img_signature_hash_method'),
            img_signature=p.get('img_signature'),
            img_signature_key_type=p.get('img_signature_key_type'))
        if case['trusted'] is not None:
            stage = 'cert_validation'
            certificate_utils.verify_certificate(None, cert_uuid,
                                                 [uu(n) for n in case['trusted']])
        stage = 'stream_verify'
        with open(os.path.join(outdir, case['image']), 'rb') as f:
            for chunk in iter(lambda: f.read(CHUNK), b''):
                verifier.update(chunk)
        verifier.verify()
        return dict(result='ok', stage='done', message='')
    except cursive_exc.SignatureVerificationError as e:
        return dict(result='SignatureVerificationError', stage=stage, message=str(e))
    except InvalidSignature as e:
        return dict(result='InvalidSignature', stage=stage, message=str(e))
    except Exception as e:  # noqa - raw exceptions escaping cursive are part of its behaviour
        return dict(result=type(e).__name__, stage=stage, message=str(e))


def base64_vectors():
    """Strings and CPython's non-strict b64decode result for each."""
    rnd = random.Random(4)
    fixed = ['', 'QUJD', 'QUJDRA==', 'QUJDRA=', 'QUJDRA', 'QUJDR', 'QQ==QUJD', '=Q=Q==',
             'QR==', 'Q===', '====', 'QU=JD', 'QUJ=D', ' Q U J D ', 'QU\nJD\n', 'QUJD!!',
             '!!!!', 'abc', 'ab==', 'a===', 'QUJD\u00e9', '-_-_', 'QUJD-_', 'QQ=*=',
             'QQ=\n=', 'QQ', 'QUI', 'QUI=', 'QUI==', 'QUI=QUJD', '\t\r\nQUJD', 'Q\x00UJD']
    alphabet = 'AQgw+/=*\n _-Zz09'
    for _ in range(400):
        n = rnd.randrange(0, 14)
        fixed.append(''.join(rnd.choice(alphabet) for _ in range(n)))
    out = []
    for s in fixed:
        try:
            out.append(dict(input=s, ok=True, hex=base64.b64decode(s).hex()))
        except Exception as e:  # noqa
            out.append(dict(input=s, ok=False, error=type(e).__name__))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--size', type=int, default=1024 * 1024 + 12345)
    args = ap.parse_args()
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    tmp = os.path.join(out, 'tmp')
    os.makedirs(tmp)

    img = make_image(args.size)
    mid = len(img) // 2
    images = {'image.bin': img, 'image.truncated.bin': img[:-1],
              'image.bitflip.bin': img[:mid] + bytes([img[mid] ^ 1]) + img[mid + 1:],
              'image.appended.bin': img + b'\0', 'image.empty.bin': b''}
    for name, data in images.items():
        write(os.path.join(out, name), data)
    img_path = os.path.join(out, 'image.bin')

    keys = {
        'rsa1024': rsa.generate_private_key(65537, 1024),
        'rsa2048': rsa.generate_private_key(65537, 2048),
        'rsa2048b': rsa.generate_private_key(65537, 2048),
        'rsa3072': rsa.generate_private_key(65537, 3072),
        'ec384': ec.generate_private_key(ec.SECP384R1()),
        'ec384b': ec.generate_private_key(ec.SECP384R1()),
        'ec521': ec.generate_private_key(ec.SECP521R1()),
        'ec256': ec.generate_private_key(ec.SECP256R1()),
        'dsa2048': dsa.generate_private_key(2048),
        'dsa3072': dsa.generate_private_key(3072),
    }
    bb = FakeBarbican()
    certs = {}
    for name, k in keys.items():
        write(os.path.join(out, 'keys', name + '.key.pem'), pem_key(k))
        certs['self-' + name] = build_cert('self-' + name, k.public_key(), 'self-' + name, k)

    # PKI
    root_k = rsa.generate_private_key(65537, 2048)
    int_k = ec.generate_private_key(ec.SECP384R1())
    other_k = rsa.generate_private_key(65537, 2048)
    leaf_k = keys['rsa2048']
    certs['root'] = build_cert('Root CA', root_k.public_key(), 'Root CA', root_k, ca=True, pathlen=2)
    certs['intermediate'] = build_cert('Intermediate CA', int_k.public_key(), 'Root CA', root_k,
                                       ca=True, pathlen=1)
    certs['leaf'] = build_cert('Image Signer', leaf_k.public_key(), 'Intermediate CA', int_k)
    certs['leaf-expired'] = build_cert('Signer expired', leaf_k.public_key(), 'Intermediate CA',
                                       int_k, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    certs['leaf-notyet'] = build_cert('Signer future', leaf_k.public_key(), 'Intermediate CA',
                                      int_k, not_before=NOW + DAY, not_after=NOW + 30 * DAY)
    certs['other-root'] = build_cert('Other Root CA', other_k.public_key(), 'Other Root CA',
                                     other_k, ca=True, pathlen=2)
    certs['leaf-other'] = build_cert('Foreign Signer', leaf_k.public_key(), 'Other Root CA', other_k)
    # same subject name as the real intermediate, different key: name match, signature mismatch
    fake_int_k = ec.generate_private_key(ec.SECP384R1())
    certs['leaf-fake-int'] = build_cert('Signer FakeInt', leaf_k.public_key(), 'Intermediate CA',
                                        fake_int_k)
    nks_k = rsa.generate_private_key(65537, 2048)
    certs['root-nokeycertsign'] = build_cert('Root NoKCS', nks_k.public_key(), 'Root NoKCS', nks_k,
                                             ca=True, pathlen=2, key_cert_sign=False)
    certs['leaf-under-nokcs'] = build_cert('Signer NoKCS', leaf_k.public_key(), 'Root NoKCS', nks_k)
    nobc_k = rsa.generate_private_key(65537, 2048)
    certs['root-nobc'] = build_cert('Root NoBC', nobc_k.public_key(), 'Root NoBC', nobc_k,
                                    ca=True, add_bc=False)
    certs['leaf-under-nobc'] = build_cert('Signer NoBC', leaf_k.public_key(), 'Root NoBC', nobc_k)
    noku_k = rsa.generate_private_key(65537, 2048)
    certs['root-noku'] = build_cert('Root NoKU', noku_k.public_key(), 'Root NoKU', noku_k,
                                    ca=True, add_ku=False)
    certs['leaf-under-noku'] = build_cert('Signer NoKU', leaf_k.public_key(), 'Root NoKU', noku_k)
    pl_root_k = rsa.generate_private_key(65537, 2048)
    pl_int_k = rsa.generate_private_key(65537, 2048)
    certs['root-pathlen0'] = build_cert('Root PL0', pl_root_k.public_key(), 'Root PL0', pl_root_k,
                                        ca=True, pathlen=0)
    certs['int-under-pl0'] = build_cert('Int PL0', pl_int_k.public_key(), 'Root PL0', pl_root_k,
                                        ca=True, pathlen=0)
    certs['leaf-under-pl0'] = build_cert('Signer PL0', leaf_k.public_key(), 'Int PL0', pl_int_k)
    # pathlen 1 at the root, two intermediates below it -> too long; 2 -> fine
    pl1_k = rsa.generate_private_key(65537, 2048)
    i1_k = ec.generate_private_key(ec.SECP384R1())
    i2_k = rsa.generate_private_key(65537, 2048)
    certs['root-pl1'] = build_cert('Root PL1', pl1_k.public_key(), 'Root PL1', pl1_k, ca=True, pathlen=1)
    certs['int1-pl1'] = build_cert('Int1 PL1', i1_k.public_key(), 'Root PL1', pl1_k, ca=True)
    certs['int2-pl1'] = build_cert('Int2 PL1', i2_k.public_key(), 'Int1 PL1', i1_k, ca=True)
    certs['leaf-under-int2'] = build_cert('Signer Int2', leaf_k.public_key(), 'Int2 PL1', i2_k)
    pss_int_k = rsa.generate_private_key(65537, 2048)
    certs['int-pss-signed'] = build_cert('Int PSS', pss_int_k.public_key(), 'Root CA', root_k,
                                         ca=True, pathlen=1, pss=True)
    certs['leaf-under-pss-int'] = build_cert('Signer PSSInt', leaf_k.public_key(), 'Int PSS', pss_int_k)
    exp_root_k = rsa.generate_private_key(65537, 2048)
    certs['root-expired'] = build_cert('Root Expired', exp_root_k.public_key(), 'Root Expired',
                                       exp_root_k, ca=True, pathlen=2,
                                       not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    certs['leaf-under-expired-root'] = build_cert('Signer ExpRoot', leaf_k.public_key(),
                                                  'Root Expired', exp_root_k)
    certs['self-ca-rsa2048b'] = build_cert('Self CA', keys['rsa2048b'].public_key(), 'Self CA',
                                           keys['rsa2048b'], ca=True, pathlen=0)
    certs['self-expired-rsa2048'] = build_cert('self-exp', leaf_k.public_key(), 'self-exp', leaf_k,
                                               not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    # an issuer cycle: A issued by B, B issued by A (cursive never terminates on it)
    a_k = rsa.generate_private_key(65537, 2048)
    b_k = rsa.generate_private_key(65537, 2048)
    certs['cycle-a'] = build_cert('Cycle A', a_k.public_key(), 'Cycle B', b_k, ca=True)
    certs['cycle-b'] = build_cert('Cycle B', b_k.public_key(), 'Cycle A', a_k, ca=True)
    certs['leaf-under-cycle'] = build_cert('Signer Cycle', leaf_k.public_key(), 'Cycle A', a_k)

    cert_files = {}
    by_name = {}
    for name, c in certs.items():
        pem = c.public_bytes(serialization.Encoding.PEM)
        write(os.path.join(out, 'certs', name + '.pem'), pem)
        cert_files[name] = 'certs/%s.pem' % name
        by_name[name] = bb.add(name, pem)

    # binary curves: python-cryptography >= 47 cannot make them; the openssl CLI can
    binary = {}
    for cname in ('sect571k1', 'sect409k1', 'sect571r1', 'sect409r1'):
        kp = os.path.join(out, 'keys', cname + '.key.pem')
        cp = os.path.join(out, 'certs', 'self-%s.pem' % cname)
        try:
            openssl('ecparam', '-name', cname, '-genkey', '-noout', '-out', kp)
            openssl('req', '-new', '-x509', '-key', kp, '-subj', '/CN=self-' + cname,
                    '-days', '30', '-sha512', '-out', cp)
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
        with open(cp, 'rb') as f:
            pem = f.read()
        cert_files['self-' + cname] = 'certs/self-%s.pem' % cname
        by_name['self-' + cname] = bb.add('self-' + cname, pem)
        binary[cname] = kp

    castellan_key_manager.API = lambda *a, **kw: bb

    data = images['image.bin']
    key_type_for = {'rsa': 'RSA-PSS', 'ec384': 'ECC_SECP384R1', 'ec384b': 'ECC_SECP384R1',
                    'ec521': 'ECC_SECP521R1', 'ec256': 'ECC_SECP256R1', 'dsa': 'DSA'}

    def kt(kname):
        for prefix in ('rsa', 'dsa'):
            if kname.startswith(prefix):
                return key_type_for[prefix]
        return key_type_for[kname]

    cases = []

    def props(sig, hash_name, key_type, cert):
        return {'img_signature': sig, 'img_signature_hash_method': hash_name,
                'img_signature_key_type': key_type, 'img_signature_certificate_uuid': cert}

    def add(cid, desc, properties, image='image.bin', trusted=None, pss_max=None,
            run=True):
        cases.append(dict(id=cid, description=desc, image=image, properties=properties,
                          trusted=trusted, pss_max=pss_max, run_cursive=run))

    # every key type x hash method
    for kname in ('rsa2048', 'ec384', 'ec521', 'dsa2048'):
        for h in HASHES:
            add('good-%s-%s' % (kname, h), '%s / %s via python-cryptography' % (kname, h),
                props(b64(sign_crypto(keys[kname], data, h)), h, kt(kname), 'self-' + kname),
                pss_max=True if kname.startswith('rsa') else None)
    for kname, h in (('rsa1024', 'SHA-512'), ('rsa3072', 'SHA-384'), ('dsa3072', 'SHA-256')):
        add('good-%s-%s' % (kname, h), '%s / %s' % (kname, h),
            props(b64(sign_crypto(keys[kname], data, h)), h, kt(kname), 'self-' + kname),
            pss_max=True if kname.startswith('rsa') else None)
    add('good-empty-image', 'zero-byte image', props(
        b64(sign_crypto(keys['rsa2048'], b'', 'SHA-256')), 'SHA-256', 'RSA-PSS', 'self-rsa2048'),
        image='image.empty.bin', pss_max=True)
    # documented openssl CLI recipe
    for kname in ('rsa2048', 'rsa1024'):
        for h in HASHES:
            sig = sign_openssl(os.path.join(out, 'keys', kname + '.key.pem'), img_path, h,
                               ['rsa_padding_mode:pss'], tmp)
            add('good-openssl-%s-%s' % (kname, h), 'openssl dgst %s -sign -sigopt '
                'rsa_padding_mode:pss' % OPENSSL_DGST[h],
                props(b64(sig), h, 'RSA-PSS', 'self-' + kname), pss_max=True)
    for kname in ('ec384', 'ec521', 'dsa2048'):
        sig = sign_openssl(os.path.join(out, 'keys', kname + '.key.pem'), img_path, 'SHA-256',
                           [], tmp)
        add('good-openssl-%s-SHA-256' % kname, 'openssl dgst -sha256 -sign (DER r,s)',
            props(b64(sig), 'SHA-256', kt(kname), 'self-' + kname))
    sig = sign_openssl(os.path.join(out, 'keys', 'rsa2048.key.pem'), img_path, 'SHA-256',
                       ['rsa_padding_mode:pss', 'rsa_pss_saltlen:digest'], tmp)
    add('pss-openssl-saltlen-digest', 'openssl -sigopt rsa_pss_saltlen:digest (salt 32)',
        props(b64(sig), 'SHA-256', 'RSA-PSS', 'self-rsa2048'), pss_max=False)
    # binary curves
    for cname, kp in binary.items():
        for h in ('SHA-512', 'SHA-256'):
            sig = sign_openssl(kp, img_path, h, [], tmp)
            add('good-%s-%s' % (cname, h), 'binary curve %s signed by the openssl CLI' % cname,
                props(b64(sig), h, 'ECC_' + cname.upper(), 'self-' + cname))
        add('bad-%s-bitflip' % cname, 'binary curve %s, tampered image' % cname,
            props(b64(sign_openssl(kp, img_path, 'SHA-512', [], tmp)), 'SHA-512',
                  'ECC_' + cname.upper(), 'self-' + cname), image='image.bitflip.bin')
    if 'sect571k1' in binary:
        add('bad-sect571k1-declared-sect571r1', 'sect571k1 cert declared ECC_SECT571R1',
            props(b64(sign_openssl(binary['sect571k1'], img_path, 'SHA-512', [], tmp)),
                  'SHA-512', 'ECC_SECT571R1', 'self-sect571k1'))

    rsa_k = keys['rsa2048']
    good_rsa = b64(sign_crypto(rsa_k, data, 'SHA-256'))
    for salt in (0, 20, 32, 64):
        add('pss-salt-%d' % salt, 'RSA-PSS salt length %d (not the maximum)' % salt,
            props(b64(sign_crypto(rsa_k, data, 'SHA-256', salt=salt)), 'SHA-256', 'RSA-PSS',
                  'self-rsa2048'), pss_max=False)
    add('bad-pss-mgf1-sha1', 'MGF1(SHA-1) instead of MGF1(hash)', props(
        b64(sign_crypto(rsa_k, data, 'SHA-256', mgf_hash='SHA-1')), 'SHA-256', 'RSA-PSS',
        'self-rsa2048'))
    add('bad-pkcs1v15', 'PKCS#1 v1.5 signature labelled RSA-PSS', props(
        b64(sign_crypto(rsa_k, data, 'SHA-256', pkcs1v15=True)), 'SHA-256', 'RSA-PSS',
        'self-rsa2048'))
    raw_rsa = sign_crypto(rsa_k, data, 'SHA-256')
    add('bad-rsa-sig-short', 'RSA-PSS signature missing its last byte',
        props(b64(raw_rsa[:-1]), 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    add('bad-rsa-sig-long', 'RSA-PSS signature with an extra byte',
        props(b64(raw_rsa + b'\0'), 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    for name, im in (('truncated', 'image.truncated.bin'), ('bitflip', 'image.bitflip.bin'),
                     ('appended', 'image.appended.bin'), ('empty', 'image.empty.bin')):
        add('bad-%s' % name, 'RSA-PSS over image.bin, checked against %s' % im,
            props(good_rsa, 'SHA-256', 'RSA-PSS', 'self-rsa2048'), image=im)
    for kname in ('ec384', 'dsa2048'):
        h = 'SHA-384'
        add('bad-bitflip-%s' % kname, '%s signature, tampered image' % kname,
            props(b64(sign_crypto(keys[kname], data, h)), h, kt(kname), 'self-' + kname),
            image='image.bitflip.bin')
    add('bad-wrong-key-rsa', 'signed by rsa2048, cert holds rsa2048b',
        props(good_rsa, 'SHA-256', 'RSA-PSS', 'self-rsa2048b'))
    add('bad-wrong-key-ec', 'signed by ec384, cert holds ec384b',
        props(b64(sign_crypto(keys['ec384'], data, 'SHA-384')), 'SHA-384', 'ECC_SECP384R1',
              'self-ec384b'))
    for kname in ('rsa2048', 'ec384', 'dsa2048'):
        add('bad-wrong-hash-method-%s' % kname, 'signed with SHA-256, declared SHA-512',
            props(b64(sign_crypto(keys[kname], data, 'SHA-256')), 'SHA-512', kt(kname),
                  'self-' + kname))
    for kname in ('ec384', 'dsa2048'):
        add('bad-raw-rs-%s' % kname, '%s signature as raw r||s, not DER' % kname,
            props(b64(sign_crypto(keys[kname], data, 'SHA-384', raw=True)), 'SHA-384',
                  kt(kname), 'self-' + kname))
        add('bad-der-trailing-%s' % kname, '%s DER signature plus a trailing byte' % kname,
            props(b64(sign_crypto(keys[kname], data, 'SHA-384') + b'\0'), 'SHA-384',
                  kt(kname), 'self-' + kname))
    for bad in ('SHA256', 'sha-256', 'SHA-1', 'MD5', 'SHA3-256', '', ' SHA-256'):
        add('bad-hash-name-%r' % bad, 'img_signature_hash_method=%r' % bad,
            props(good_rsa, bad, 'RSA-PSS', 'self-rsa2048'))
    for bad in ('RSA-PKCS1', 'rsa-pss', 'RSA_PSS', 'ECDSA', 'ECC_SECP256R1', 'ECC_SECT571K1',
                'ECC_SECT409R1', 'EdDSA', ''):
        add('bad-key-type-%r' % bad, 'img_signature_key_type=%r, RSA cert' % bad,
            props(good_rsa, 'SHA-256', bad, 'self-rsa2048'))
    add('bad-key-type-mismatch-rsa-vs-ec', 'RSA-PSS declared, EC cert',
        props(good_rsa, 'SHA-256', 'RSA-PSS', 'self-ec384'))
    add('bad-key-type-mismatch-dsa-vs-rsa', 'DSA declared, RSA cert',
        props(good_rsa, 'SHA-256', 'DSA', 'self-rsa2048'))
    add('bad-key-type-mismatch-ec-vs-dsa', 'ECC_SECP384R1 declared, DSA cert',
        props(b64(sign_crypto(keys['dsa2048'], data, 'SHA-256')), 'SHA-256', 'ECC_SECP384R1',
              'self-dsa2048'))
    add('curve-p521-declared-p384', 'ECC_SECP384R1 declared, P-521 cert and signature',
        props(b64(sign_crypto(keys['ec521'], data, 'SHA-512')), 'SHA-512', 'ECC_SECP384R1',
              'self-ec521'))
    add('curve-p256-declared-p384', 'ECC_SECP384R1 declared, P-256 cert and signature',
        props(b64(sign_crypto(keys['ec256'], data, 'SHA-256')), 'SHA-256', 'ECC_SECP384R1',
              'self-ec256'))
    # base64
    add('bad-b64-padding', 'img_signature="abc"', props('abc', 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    add('bad-b64-garbage-only', 'img_signature="!!!!" decodes to nothing',
        props('!!!!', 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    add('bad-b64-empty-string', 'img_signature=""', props('', 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    add('bad-b64-empty-and-bad-key-type', 'img_signature="" and key type EdDSA',
        props('', 'SHA-256', 'EdDSA', 'self-rsa2048'))
    wrapped = '\n'.join(good_rsa[i:i + 76] for i in range(0, len(good_rsa), 76))
    add('b64-with-newlines', 'base64 wrapped at 76 columns',
        props(wrapped, 'SHA-256', 'RSA-PSS', 'self-rsa2048'), pss_max=True)
    add('b64-junk-chars', 'valid base64 with " * " inserted',
        props(good_rsa[:10] + ' * ' + good_rsa[10:], 'SHA-256', 'RSA-PSS', 'self-rsa2048'),
        pss_max=True)
    add('b64-trailing-after-padding', 'padded base64 followed by more base64 (ignored)',
        props(b64(sign_crypto(keys['ec384'], data, 'SHA-384')) + '==QUJD', 'SHA-384',
              'ECC_SECP384R1', 'self-ec384'))
    add('bad-b64-urlsafe', 'URL-safe alphabet', props(
        base64.urlsafe_b64encode(raw_rsa).decode(), 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    add('bad-b64-non-ascii', 'non-ASCII character', props(
        good_rsa + '\u00e9', 'SHA-256', 'RSA-PSS', 'self-rsa2048'))
    full = props(good_rsa, 'SHA-256', 'RSA-PSS', 'self-rsa2048')
    for missing in ('img_signature', 'img_signature_hash_method', 'img_signature_key_type',
                    'img_signature_certificate_uuid'):
        p = dict(full)
        del p[missing]
        add('bad-missing-%s' % missing, 'property %s absent' % missing, p)
    p = dict(full)
    del p['img_signature']
    del p['img_signature_key_type']
    add('bad-missing-two', 'img_signature and img_signature_key_type absent', p)
    # validity without a trusted list
    add('expired-cert-no-trusted-list', 'expired signing cert, no trusted list',
        props(good_rsa, 'SHA-256', 'RSA-PSS', 'leaf-expired'), pss_max=True)
    add('notyet-cert-no-trusted-list', 'not-yet-valid signing cert, no trusted list',
        props(good_rsa, 'SHA-256', 'RSA-PSS', 'leaf-notyet'), pss_max=True)
    # chains
    R, I = 'root', 'intermediate'
    leaf = lambda c: props(good_rsa, 'SHA-256', 'RSA-PSS', c)
    add('good-chain', 'leaf <- intermediate <- root', leaf('leaf'), trusted=[R, I], pss_max=True)
    add('good-chain-reversed-order', 'trusted=[intermediate, root]', leaf('leaf'),
        trusted=[I, R], pss_max=True)
    add('good-chain-extra-ids', 'trusted list with a missing uuid and an unrelated root',
        leaf('leaf'), trusted=['<missing>', 'other-root', I, R], pss_max=True)
    add('good-self-signed-ca-trusted', 'self-signed CA signing cert trusted directly',
        props(b64(sign_crypto(keys['rsa2048b'], data, 'SHA-256')), 'SHA-256', 'RSA-PSS',
              'self-ca-rsa2048b'), trusted=['self-ca-rsa2048b'], pss_max=True)
    add('bad-pathlen-two-intermediates', 'root pathlen:1 -> int1 -> int2 -> leaf (two '
        'intermediates below the root)', leaf('leaf-under-int2'),
        trusted=['root-pl1', 'int1-pl1', 'int2-pl1'])
    add('bad-expired-leaf', 'expired signing cert', leaf('leaf-expired'), trusted=[R, I])
    add('bad-notyet-leaf', 'signing cert not yet valid', leaf('leaf-notyet'), trusted=[R, I])
    add('bad-self-expired-trusted-list', 'expired self-signed cert, trusted list',
        leaf('self-expired-rsa2048'), trusted=[R])
    add('bad-untrusted-chain', 'leaf under an untrusted root', leaf('leaf-other'), trusted=[R, I])
    add('bad-fake-intermediate', 'issuer name matches a trusted CA but its key did not sign',
        leaf('leaf-fake-int'), trusted=[R, I])
    add('bad-trust-intermediate-only', 'only the intermediate trusted', leaf('leaf'), trusted=[I])
    add('bad-trust-root-only', 'only the root trusted', leaf('leaf'), trusted=[R])
    add('bad-self-signed-not-ca', 'self-signed non-CA leaf trusted', leaf('self-rsa2048'),
        trusted=['self-rsa2048'])
    add('bad-root-without-keycertsign', 'CA root lacking keyCertSign', leaf('leaf-under-nokcs'),
        trusted=['root-nokeycertsign'])
    add('bad-root-without-basicconstraints', 'root without basicConstraints',
        leaf('leaf-under-nobc'), trusted=['root-nobc'])
    add('bad-root-without-keyusage', 'root without keyUsage', leaf('leaf-under-noku'),
        trusted=['root-noku'])
    add('bad-pathlen', 'root pathlen:0 with an intermediate', leaf('leaf-under-pl0'),
        trusted=['root-pathlen0', 'int-under-pl0'])
    add('bad-expired-root', 'trusted root expired', leaf('leaf-under-expired-root'),
        trusted=['root-expired'])
    add('pss-signed-intermediate', 'intermediate whose X.509 signature is RSA-PSS',
        leaf('leaf-under-pss-int'), trusted=[R, 'int-pss-signed'])
    add('bad-empty-trusted-list', 'trusted=[]', leaf('leaf'), trusted=[])
    add('bad-sig-after-good-chain', 'valid chain, tampered image', leaf('leaf'),
        image='image.bitflip.bin', trusted=[R, I])
    add('bad-issuer-cycle', 'trusted CAs issue each other in a cycle (cursive loops forever: '
        'not run)', leaf('leaf-under-cycle'), trusted=['cycle-a', 'cycle-b'], run=False)

    for case in cases:
        case['cursive'] = run_cursive(case, out, by_name) if case['run_cursive'] else None
        case['signing_cert'] = case['properties'].get('img_signature_certificate_uuid')
    shutil.rmtree(tmp)
    env = {
        'python': sys.version.split()[0],
        'cryptography': cryptography.__version__,
        'cursive_registered_key_types': sorted(signature_utils.SignatureKeyType.REGISTERED_TYPES),
        'openssl_cli': subprocess.run(['openssl', 'version'], capture_output=True,
                                      text=True).stdout.strip(),
        'binary_curves_signed': sorted(binary),
    }
    with open(os.path.join(out, 'cases.json'), 'w') as f:
        json.dump({'environment': env, 'cert_files': cert_files, 'cases': cases}, f, indent=1)
    with open(os.path.join(out, 'base64.json'), 'w') as f:
        json.dump(base64_vectors(), f, indent=1)
    for c in cases:
        o = c['cursive'] or {'result': 'not run', 'stage': '', 'message': ''}
        print('%-42s %-27s %-15s %s' % (c['id'], o['result'], o['stage'], o['message'][:70]))
    print('%d cases' % len(cases))
    return 0


if __name__ == '__main__':
    sys.exit(main())
