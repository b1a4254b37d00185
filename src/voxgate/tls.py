"""TLS for ``voxgate serve``: a certificate you bring, or a development certificate made here.

``--tls-cert FILE --tls-key FILE`` (``VOXGATE_TLS_CERT`` / ``VOXGATE_TLS_KEY``) serve https and
wss with your PEM chain and key. ``--tls-dev`` makes a self-signed certificate for this
machine's names (``localhost``, its host name, ``127.0.0.1``, ``::1`` and the ``--host``
address) once, keeps it (``VOXGATE_TLS_DEV_DIR``, default ``~/.local/share/voxgate/tls-dev``)
and reuses it on later runs, so a browser exception or a pinned fingerprint stays valid; a
certificate close to expiry, or one that does not name the host, is made again. ``serve``
prints its SHA-256 fingerprint, which is what a person compares in a browser's certificate
viewer, and the file a client can trust (``SSL_CERT_FILE``, ``NODE_EXTRA_CA_CERTS``).

Must not: print (the CLI says things), or serve anything. Failures are one sentence
(:class:`TlsError`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

DEV_CERT: Final = "voxgate-dev-cert.pem"
DEV_KEY: Final = "voxgate-dev-key.pem"
DEV_VALID_DAYS: Final = 365  # browsers refuse leaf certificates valid for more than 398 days
DEV_RENEW_DAYS: Final = 7
_WILDCARDS: Final = {"", "0.0.0.0", "::"}  # noqa: S104 (names, not a bind)


class TlsError(Exception):
    """TLS cannot be set up; ``str(exc)`` is one sentence for a person (exit code 2)."""


@dataclass(frozen=True)
class TlsSetup:
    context: ssl.SSLContext
    cert_path: Path
    fingerprint_sha256: str  # AB:CD:… over the DER certificate, as browsers show it
    dev: bool


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate (the first in a PEM chain), colon-separated upper hex."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii", errors="replace"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def default_dev_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxgate" / "tls-dev"


def dev_names(host: str) -> list[str]:
    """The names a development certificate covers for a server bound to ``host``."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    if host not in _WILDCARDS and host not in names:
        names.append(host)
    return names


def make_dev_certificate(
    folder: Path, names: Sequence[str], *, now: dt.datetime | None = None
) -> tuple[Path, Path]:
    """Write a self-signed certificate for ``names`` and its key into ``folder`` (reused while
    it covers them and is not about to expire). Returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or dt.datetime.now(dt.UTC)
    cert_path, key_path = folder / DEV_CERT, folder / DEV_KEY
    if _reusable(cert_path, key_path, names, now):
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "voxgate development certificate"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voxgate (self-signed)"),
        ]
    )
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _reusable(cert_path: Path, key_path: Path, names: Sequence[str], now: dt.datetime) -> bool:
    from cryptography import x509

    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    covered = {str(n) for n in alt.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)}
    fresh = cert.not_valid_after_utc - now > dt.timedelta(days=DEV_RENEW_DAYS)
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    return fresh and wanted <= covered


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key``: TLS 1.2+, HTTP/1.1 (WebSocket
    upgrades need it; no h2 is offered).

    Raises:
        TlsError: a file is missing, unreadable, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise TlsError(f"the TLS {what} file '{path}' does not exist.")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"cannot use the TLS certificate '{cert}' with the key '{key}' "
            f"({exc.reason or exc.strerror or 'not a PEM certificate and matching key'})."
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read the TLS files: {exc.strerror or exc}.") from None
    return context


def setup(settings: Any) -> TlsSetup | None:
    """TLS as the settings ask for it, or None for plain http/ws.

    Raises:
        TlsError: half a pair given, both modes asked for, or a file that does not work.
    """
    cert, key, dev = settings.tls_cert, settings.tls_key, settings.tls_dev
    if dev and (cert or key):
        raise TlsError("use either --tls-dev or --tls-cert/--tls-key, not both.")
    if bool(cert) != bool(key):
        missing = "--tls-key (VOXGATE_TLS_KEY)" if cert else "--tls-cert (VOXGATE_TLS_CERT)"
        raise TlsError(f"TLS needs a certificate and its key; {missing} is missing.")
    if dev:
        folder = Path(settings.tls_dev_dir).expanduser() if settings.tls_dev_dir else None
        try:
            cert_path, key_path = make_dev_certificate(
                folder or default_dev_dir(), dev_names(settings.host)
            )
        except OSError as exc:
            raise TlsError(f"cannot write the development certificate: {exc}.") from None
    elif cert and key:
        cert_path, key_path = Path(cert).expanduser(), Path(key).expanduser()
    else:
        return None
    context = server_context(cert_path, key_path)
    return TlsSetup(context, cert_path, fingerprint(cert_path.read_bytes()), dev=bool(dev))
