"""How the fleet-side tools reach the broker: the URL, the TLS and credential options.

One place for ``edge-deploy`` and ``edge-insights``: the same command-line options, parsed
the same way, applied to a paho client the same way.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from agent.contract import DEFAULT_PREFIX
from agent.errors import DeployError


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise DeployError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise DeployError(f"broker URL {url!r} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise DeployError(f"broker URL {url!r}: bad port: {exc}") from exc
        return cls(parts.hostname, port, tls, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


@dataclass(frozen=True)
class BrokerOptions:
    """Where the broker is and how to log in: the URL plus TLS files and credentials."""

    url: BrokerURL
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **kw: str | None) -> BrokerOptions:
        return cls(BrokerURL.parse(url), **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerOptions:
        return cls.from_url(args.broker, cafile=args.cafile, certfile=args.certfile,
                            keyfile=args.keyfile, username=args.username,
                            password_file=args.password_file)

    def credentials(self) -> tuple[str | None, str | None]:
        """The user name and password: options win over the URL; the password file is read
        here (its first line), so the password never appears on a command line."""
        user = self.username or self.url.username
        password = self.url.password
        if self.password_file:
            try:
                lines = Path(self.password_file).read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DeployError(f"--password-file {self.password_file}: {exc}") from exc
            password = lines[0].strip() if lines else ""
        if password is not None and user is None:
            raise DeployError("a password needs a user name (--username or user@ in the URL)")
        return user, password

    def configure(self, client: mqtt.Client) -> None:
        """Apply credentials and TLS to a paho client before it connects."""
        user, password = self.credentials()
        if user is not None:
            client.username_pw_set(user, password)
        if (self.certfile is None) != (self.keyfile is None):
            raise DeployError("--certfile and --keyfile go together (mutual TLS)")
        if self.url.tls:
            try:
                client.tls_set(ca_certs=self.cafile, certfile=self.certfile,
                               keyfile=self.keyfile, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise DeployError(f"TLS setup failed: {exc}") from exc
        elif self.cafile or self.certfile:
            raise DeployError("--cafile/--certfile need an mqtts:// broker URL")


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    """The broker options every fleet-side command takes."""
    parser.add_argument("--broker", required=True, help="mqtt://[user:pass@]host:port or mqtts://")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix of the fleet")
    parser.add_argument("--cafile", default=None, help="CA certificate for mqtts://")
    parser.add_argument("--certfile", default=None, help="client certificate (mutual TLS)")
    parser.add_argument("--keyfile", default=None, help="client key (mutual TLS)")
    parser.add_argument("--username", default=None, help="user name (overrides the URL's)")
    parser.add_argument("--password-file", default=None,
                        help="file whose first line is the password")
