"""A throw-away PKI for tests, made with the ``openssl`` command (no Python crypto library).

    ca = TestCA.create(tmp_path / "ca")                      # "relctl test CA"
    server = ca.issue("node", dns=["localhost"], ips=["127.0.0.1"], client=False)
    client = ca.issue("agent", server=False)
    server.cert, server.key, server.ca                       # PEM paths; key files are 0600
    other = TestCA.create(tmp_path / "other", name="unrelated CA")   # for wrong-CA tests
    old = ca.issue("old", dns=["localhost"], expired=True)

Keys are EC P-256 (fast to make). Certificates carry what strict verifiers (Python's ssl,
OTP's public_key) check: a critical CA basicConstraints and keyUsage on the CA, authority and
subject key identifiers, keyUsage and extendedKeyUsage (serverAuth and/or clientAuth) on the
leaves, and the subjectAltNames given. Every file lands in the CA's directory, named after the
certificate: ``NAME.crt``, ``NAME.key``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "PkiError", "TestCA"]

CURVE = "prime256v1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PkiError(RuntimeError):
    """An openssl command failed; the message has its command line and output."""


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    exe = shutil.which("openssl")
    if exe is None:
        raise PkiError("the openssl command is not on PATH; install OpenSSL to run the TLS tests")
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=30)
    if proc.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed (exit {proc.returncode}): "
                       f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    return proc.stdout


def _new_key(path: Path) -> Path:
    # PEM to stdout, written here: created 0600, never readable by others even for a moment.
    pem = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{CURVE}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    path.chmod(0o600)  # an existing file keeps its mode through O_TRUNC
    return path


def _subject(cn: str) -> str:
    # -subj syntax: '/' and '=' separate fields; refuse them instead of escaping.
    if not cn or any(ch in cn for ch in "/=\\\n"):
        raise ValueError(f"common name {cn!r} must be non-empty without '/', '=', '\\'")
    return f"/CN={cn}"


@dataclass(frozen=True)
class CertPair:
    """An issued certificate: PEM paths of the certificate, its key, and the signing CA."""

    name: str
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TestCA:
    """A self-signed CA in ``directory`` (``ca.crt``, ``ca.key``) that issues certificates."""

    __test__ = False  # a helper, not a pytest test class

    directory: Path
    name: str
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "relctl test CA", *, days: int = 30) -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_key(directory / "ca.key")
        cert = directory / "ca.crt"
        _openssl("req", "-new", "-x509", "-key", str(key), "-subj", _subject(name),
                 "-days", str(days), "-sha256", "-set_serial", f"0x{secrets.token_hex(8)}",
                 "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash",
                 "-out", str(cert))
        return cls(directory=directory, name=name, cert=cert, key=key)

    def issue(self, name: str, *, cn: str | None = None, dns: Sequence[str] = (),
              ips: Sequence[str] = (), server: bool = True, client: bool = True,
              days: int = 30, expired: bool = False) -> CertPair:
        """A key and a certificate signed by this CA, as ``NAME.key`` and ``NAME.crt``.

        ``cn`` defaults to ``name``. ``server``/``client`` choose the extendedKeyUsage
        (serverAuth, clientAuth); at least one. ``expired=True`` makes a certificate whose
        validity ended before now (every verifier rejects it as expired)."""
        if not _NAME.fullmatch(name) or name == "ca":
            raise ValueError(f"certificate name {name!r}: 1-64 letters, digits, '.', '_', '-' "
                             "(and not 'ca'); it names the files")
        if not (server or client):
            raise ValueError("a certificate needs server=True, client=True, or both")
        usages = ",".join(u for u, on in (("serverAuth", server), ("clientAuth", client)) if on)
        alt = [f"DNS:{d}" for d in dns] + [f"IP:{ip}" for ip in ips]
        ext_lines = ["basicConstraints=critical,CA:FALSE",
                     "keyUsage=critical,digitalSignature,keyAgreement",
                     f"extendedKeyUsage={usages}",
                     "subjectKeyIdentifier=hash",
                     "authorityKeyIdentifier=keyid,issuer"]
        if alt:
            ext_lines.append("subjectAltName=" + ",".join(alt))
        extfile = self.directory / f"{name}.ext"
        extfile.write_text("\n".join(ext_lines) + "\n")
        key = _new_key(self.directory / f"{name}.key")
        csr = _openssl("req", "-new", "-key", str(key), "-subj", _subject(cn or name))
        cert = self.directory / f"{name}.crt"
        # -days -1 ends the validity a day before it starts, which is now: expired.
        _openssl("x509", "-req", "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-set_serial", f"0x{secrets.token_hex(8)}", "-sha256",
                 "-days", "-1" if expired else str(days),
                 "-extfile", str(extfile), "-out", str(cert), stdin=csr)
        extfile.unlink()
        return CertPair(name=name, cert=cert, key=key, ca=self.cert)
