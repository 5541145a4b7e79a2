#!/usr/bin/env python3
"""Signs a Countersign form with pyHanko, a third-party signing tool, for the digital-signature
tests: every key and certificate here is made by this script, on the spot, for that run.

    python3 tests/pdfsign/sign.py FORM.pdf OUT_DIR TAMPER_FROM TAMPER_TO CHANGE_FIELD NEW_VALUE [AT]

(AT, an ISO 8601 time, is when the certificates are judged: their validity is set around it;
the default is now)

writes into OUT_DIR:
  root.pem                    the test root CA: the trust store the tests configure
  chain.pdf                   signed by "Dr Jane Signer" (leaf <- intermediate <- root); the
                              CMS carries the leaf and the intermediate
  self_signed.pdf             signed with a self-signed certificate
  expired.pdf                 signed with a leaf (from the root) that expired a year ago
  tampered.pdf                chain.pdf with TAMPER_FROM changed to TAMPER_TO (same length)
                              inside the signed bytes
  changed_after_signing.pdf   chain.pdf plus an incremental update that sets CHANGE_FIELD to
                              NEW_VALUE
  annotated_after_signing.pdf chain.pdf plus an incremental update that only adds a comment
                              (a /Text annotation) to the first page
"""

import datetime
import sys
from pathlib import Path

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import signers
from pyhanko_certvalidator.registry import SimpleCertificateStore



def name(common_name):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Countersign Test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def certificate(subject, issuer, public_key, issuer_key, ca, not_before, not_after):
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False)
    else:
        usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=not ca,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usage,
        ),
        critical=True,
    )
    return builder.sign(issuer_key, hashes.SHA256())


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def to_asn1(cert, key):
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    key_der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return asn1_x509.Certificate.load(cert_der), asn1_keys.PrivateKeyInfo.load(key_der)


def sign(form, out, cert, key, others, signer_name):
    signing_cert, signing_key = to_asn1(cert, key)
    store = SimpleCertificateStore()
    for other in others:
        store.register(asn1_x509.Certificate.load(other.public_bytes(serialization.Encoding.DER)))
    signer = signers.SimpleSigner(signing_cert=signing_cert, signing_key=signing_key, cert_registry=store)
    with open(form, "rb") as inf:
        writer = IncrementalPdfFileWriter(inf)
        meta = signers.PdfSignatureMetadata(
            field_name="signatory_signature", md_algorithm="sha256", name=signer_name, reason="Authorised signatory"
        )
        with open(out, "wb") as outf:
            signers.sign_pdf(writer, meta, signer=signer, existing_fields_only=True, output=outf)


def find_field(writer, field_name):
    root = writer.root
    for ref in root["/AcroForm"]["/Fields"]:
        field = ref.get_object()
        if str(field.get("/T")) == field_name:
            return ref
    raise SystemExit(f"no field {field_name} in the form")


def change_field(signed, out, field_name, value):
    with open(signed, "rb") as inf:
        writer = IncrementalPdfFileWriter(inf)
        ref = find_field(writer, field_name)
        field = ref.get_object()
        field["/V"] = generic.TextStringObject(value)
        writer.update_container(field)
        with open(out, "wb") as outf:
            writer.write(outf)


def annotate(signed, out):
    with open(signed, "rb") as inf:
        writer = IncrementalPdfFileWriter(inf)
        page_ref = writer.root["/Pages"]["/Kids"][0]
        page = page_ref.get_object()
        note = generic.DictionaryObject(
            {
                generic.NameObject("/Type"): generic.NameObject("/Annot"),
                generic.NameObject("/Subtype"): generic.NameObject("/Text"),
                generic.NameObject("/Rect"): generic.ArrayObject([generic.FloatObject(v) for v in (20, 20, 40, 40)]),
                generic.NameObject("/Contents"): generic.TextStringObject("Checked by the practice manager"),
            }
        )
        note_ref = writer.add_object(note)
        annots = page.get("/Annots")
        if annots is None:
            page["/Annots"] = generic.ArrayObject([note_ref])
        else:
            annots = annots.get_object()
            annots.append(note_ref)
            if isinstance(page.raw_get("/Annots"), generic.IndirectObject):
                writer.update_container(annots)
        writer.update_container(page)
        with open(out, "wb") as outf:
            writer.write(outf)


def main():
    global NOW
    form, out_dir, tamper_from, tamper_to, change_name, change_value = sys.argv[1:7]
    NOW = datetime.datetime.fromisoformat(sys.argv[7]) if len(sys.argv) > 7 else datetime.datetime.now(datetime.timezone.utc)
    if len(tamper_from) != len(tamper_to):
        raise SystemExit("the tampered text must keep its length")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    day = datetime.timedelta(days=1)

    root_key = rsa_key()
    root = certificate("Countersign Test Root CA", "Countersign Test Root CA", root_key.public_key(), root_key,
                       True, NOW - 3650 * day, NOW + 3650 * day)
    (out / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    # The intermediate uses an elliptic-curve key, so the chain mixes algorithms as real ones do.
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = certificate("Countersign Test Issuing CA", "Countersign Test Root CA", inter_key.public_key(), root_key,
                        True, NOW - 1000 * day, NOW + 1000 * day)
    leaf_key = rsa_key()
    leaf = certificate("Dr Jane Signer", "Countersign Test Issuing CA", leaf_key.public_key(), inter_key,
                       False, NOW - 30 * day, NOW + 365 * day)
    sign(form, out / "chain.pdf", leaf, leaf_key, [inter], "Dr Jane Signer")

    own_key = rsa_key()
    own = certificate("Dr Self Signer", "Dr Self Signer", own_key.public_key(), own_key,
                      False, NOW - 30 * day, NOW + 365 * day)
    sign(form, out / "self_signed.pdf", own, own_key, [], "Dr Self Signer")

    old_key = rsa_key()
    old = certificate("Dr Expired Signer", "Countersign Test Root CA", old_key.public_key(), root_key,
                      False, NOW - 800 * day, NOW - 365 * day)
    sign(form, out / "expired.pdf", old, old_key, [], "Dr Expired Signer")

    signed = (out / "chain.pdf").read_bytes()
    at = signed.find(tamper_from.encode())
    if at < 0:
        raise SystemExit(f"{tamper_from!r} is not in the signed form")
    tampered = signed[:at] + tamper_to.encode() + signed[at + len(tamper_from):]
    (out / "tampered.pdf").write_bytes(tampered)

    change_field(out / "chain.pdf", out / "changed_after_signing.pdf", change_name, change_value)
    annotate(out / "chain.pdf", out / "annotated_after_signing.pdf")


if __name__ == "__main__":
    main()
