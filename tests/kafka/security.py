"""The security modes of a test cluster: TLS material made on the spot, the listeners and the broker settings that
ask for each mode, SCRAM users and tokens.

``Security(folder)`` makes (with ``cryptography``) a CA and, signed by it, the broker's certificate (127.0.0.1 and
localhost) and the clients' certificates: ``CN=router`` (allowed everything: a super user), ``CN=limited`` (only
what ACLs grant it), ``CN=router`` again but expired a day ago, and ``CN=router`` signed by another CA (the broker
trusts only its own). Every file is PEM: the broker reads its key store and trust store as PEM (``ssl.keystore.type =
PEM``), as aiokafka does. A ``KafkaCluster(..., security=Security(folder))`` then has, beside its PLAINTEXT
listener (which the tests' harness keeps using: its principal, ``User:ANONYMOUS``, is a super user), on each broker:

- ``SSL``: TLS with client certificates required (mTLS); the principal is the certificate's CN
  (``ssl.principal.mapping.rules``);
- ``SASL_SSL``: TLS (no client certificate) with SASL ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512`` and
  ``OAUTHBEARER``; PLAIN's and SCRAM's users are ``USERS`` (SCRAM's credentials written into the metadata log when the
  storage is formatted), OAUTHBEARER's tokens are unsigned JWTs (``token()``) checked by Kafka's unsecured validator
  (its ``sub`` is the principal; an expired one is refused). An OAUTHBEARER session lasts at most ``REAUTH_MS``
  (``connections.max.reauth.ms``, KIP-368): a client that does not re-authenticate (aiokafka) has its connection
  closed then, and logs in again with the token it has now, so a token refused at run time is seen within it;
- ``SASL_PLAINTEXT``: the same mechanisms without TLS;
- StandardAuthorizer (KRaft's) with ``allow.everyone.if.no.acl.found = false``: ``User:router`` and
  ``User:ANONYMOUS`` are super users, anyone else may do only what ACLs grant (``KafkaCluster.grant``).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

USERS = {"router": "router-secret-1", "limited": "limited-secret-2"}  # PLAIN and SCRAM-SHA-512: name -> password
SUPER_USERS = ("ANONYMOUS", "router")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
LISTENERS = ("SSL", "SASL_SSL", "SASL_PLAINTEXT")  # beside PLAINTEXT, in this order on each broker
SASL_LISTENERS = ("sasl_ssl", "sasl_plaintext")
REAUTH_MS = 10_000  # an OAUTHBEARER session's longest life (connections.max.reauth.ms)


@dataclass(frozen=True)
class Client:
    """A client certificate and its key (PEM files)."""

    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    def __init__(self, cn: str) -> None:
        self.key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, cn: str, *, server: bool = False, valid_days: tuple[float, float] = (-1, 30)
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A certificate for ``cn``, valid from ``valid_days[0]`` to ``valid_days[1]`` days from now."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
            .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


class Security:
    """The TLS material of one cluster, in ``folder`` (made when missing), and what the brokers need of it."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).absolute()
        self.ca = self.folder / "ca.pem"
        self.broker_store = self.folder / "broker.pem"  # the broker's key and certificate chain
        if not self.ca.exists():
            self._make()

    def _make(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ca, stranger = Authority("wr-test-ca"), Authority("wr-other-ca")
        key, cert = ca.issue("127.0.0.1", server=True)
        self.broker_store.write_bytes(key_pem(key) + cert_pem(cert) + cert_pem(ca.cert))
        for name, authority, cn, days in (
            ("router", ca, "router", (-1, 30)),
            ("limited", ca, "limited", (-1, 30)),
            ("expired", ca, "router", (-10, -1)),
            ("untrusted", stranger, "router", (-1, 30)),
        ):
            key, cert = authority.issue(cn, valid_days=days)
            (self.folder / f"{name}.key").write_bytes(key_pem(key))
            (self.folder / f"{name}.crt").write_bytes(cert_pem(cert))
        self.ca.write_bytes(cert_pem(ca.cert))  # last: its presence says the folder is complete

    def client(self, name: str) -> Client:
        """``router``, ``limited``, ``expired`` or ``untrusted``."""
        return Client(self.folder / f"{name}.crt", self.folder / f"{name}.key")

    def broker_properties(self) -> dict[str, str]:
        """What every broker of the cluster adds to its properties (the listeners themselves are the cluster's)."""
        jaas = "org.apache.kafka.common.security"
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
        props = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.broker_store),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        }
        for listener in SASL_LISTENERS:
            at = f"listener.name.{listener}"
            props |= {
                f"{at}.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
                f"{at}.plain.sasl.jaas.config": f"{jaas}.plain.PlainLoginModule required {plain_users};",
                f"{at}.scram-sha-256.sasl.jaas.config": f"{jaas}.scram.ScramLoginModule required;",
                f"{at}.scram-sha-512.sasl.jaas.config": f"{jaas}.scram.ScramLoginModule required;",
                f"{at}.oauthbearer.sasl.jaas.config": (
                    f'{jaas}.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";'
                ),
                f"{at}.oauthbearer.connections.max.reauth.ms": str(REAUTH_MS),
            }
        return props | {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(f"User:{name}" for name in SUPER_USERS),
        }

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that write the SCRAM users into the metadata log."""
        return [arg for name, password in USERS.items() for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
                for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")]  # fmt: skip


def token(sub: str, *, lifetime_s: float = 3600) -> str:
    """An unsigned JWT (``alg: none``) as Kafka's unsecured OAUTHBEARER validator takes it: ``sub`` is the
    principal; a negative ``lifetime_s`` makes one that expired that long ago (refused)."""

    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': sub, 'iat': now - 60, 'exp': int(now + lifetime_s)})}."
