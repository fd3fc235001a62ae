"""Throwaway TLS material for local nodes: a CA and a server certificate it signed.

Made with the ``openssl`` command when it is on ``PATH``, else with the
``cryptography`` package.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a throwaway CA certificate and a server certificate/key it signed."""

    ca_file: str
    cert_file: str
    key_file: str


def _san_entries(hosts: Iterable[str]) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    for h in ["127.0.0.1", "::1", "localhost", *hosts]:
        try:
            entry = ("IP", str(ipaddress.ip_address(h)))
        except ValueError:
            entry = ("DNS", h)
        if entry not in out:
            out.append(entry)
    return out


def _tls_openssl(openssl: str, d: str, hosts: Sequence[str]) -> TLSFiles:
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = (os.path.join(d, f) for f in ("server.key", "server.csr", "server.crt"))
    ext = os.path.join(d, "server.ext")
    san = ",".join(f"{k}:{v}" for k, v in _san_entries(hosts))
    with open(ext, "w") as f:
        # AKI/SKI and key usages make the chain pass Python 3.13's default
        # VERIFY_X509_STRICT, not only the looser checks of older versions.
        f.write(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
    # EC P-256 keys: generated in milliseconds, RSA-2048 takes far longer.
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "30",
         "-subj", "/CN=quorumlock throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=quorumlock node"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "30", "-extfile", ext],
    ]  # fmt: skip
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(
                f"openssl failed ({' '.join(cmd[:3])}...): {res.stderr.strip()[-800:]}"
            )
    return TLSFiles(ca_crt, crt, key)


def _tls_cryptography(d: str, hosts: Sequence[str]) -> TLSFiles:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdate a day: a node whose wall clock is being skewed (docs/faults.md rows
    # 4-7) must not see its certificate as "not yet valid".
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    def _usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment",
                 "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                 "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumlock throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: List[x509.GeneralName] = []
    for kind, value in _san_entries(hosts):
        alt.append(
            x509.IPAddress(ipaddress.ip_address(value)) if kind == "IP" else x509.DNSName(value)
        )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumlock node")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(*(os.path.join(d, f) for f in ("ca.crt", "server.crt", "server.key")))
    pem = serialization.Encoding.PEM
    with open(files.ca_file, "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(files.cert_file, "wb") as f:
        f.write(cert.public_bytes(pem))
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def make_tls_files(directory: str, hosts: Sequence[str] = (), backend: Optional[str] = None) -> TLSFiles:
    """Write a throwaway CA and a server certificate for ``hosts`` into ``directory``.

    The server certificate names 127.0.0.1, ::1, localhost and every entry of
    ``hosts`` (IPs as IP SANs, names as DNS SANs), so hostname checking can stay
    on in clients.  ``backend`` is ``"openssl"`` (the CLI), ``"cryptography"``
    (the package), or None: the CLI if present, else the package.

    Raises:
        RuntimeError: neither the ``openssl`` command nor ``cryptography`` is available.
    """
    if backend not in (None, "openssl", "cryptography"):
        raise ValueError(f"backend must be None, 'openssl' or 'cryptography', got {backend!r}")
    os.makedirs(directory, exist_ok=True)
    openssl = shutil.which("openssl")
    if backend in (None, "openssl") and openssl:
        return _tls_openssl(openssl, directory, hosts)
    if backend == "openssl":
        raise RuntimeError("backend='openssl' but no `openssl` command is on PATH")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "tls=True needs a certificate generator: install the `openssl` command "
            "(apt-get install openssl) or the `cryptography` package (pip install cryptography)"
        ) from None
    return _tls_cryptography(directory, hosts)
