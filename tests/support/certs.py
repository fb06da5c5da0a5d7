"""A throwaway certificate authority, server and client certificates made with ``openssl``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {result.stderr}")


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> None:
    _openssl("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1],
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
             "-extfile", f"{name}.ext", cwd=folder)


def make_certs(folder: Path, ca_name: str = "test-ca") -> Certs:
    """CA, a server certificate for ``localhost`` / ``127.0.0.1`` and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", f"/CN={ca_name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    ca = (folder / "ca.crt", folder / "ca.key")
    _signed(folder, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                  "extendedKeyUsage=serverAuth")
    _signed(folder, "client", ca, "extendedKeyUsage=clientAuth")
    return Certs(ca[0], ca[1], folder / "server.crt", folder / "server.key",
                 folder / "client.crt", folder / "client.key")


def add_password(password_file: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in a Mosquitto password file (``mosquitto_passwd -b``)."""
    args = ["mosquitto_passwd", "-b", str(password_file), user, password]
    if not password_file.exists():
        args.insert(1, "-c")
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"mosquitto_passwd failed: {result.stderr or result.stdout}")
