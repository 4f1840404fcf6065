"""A broker's security settings, loaded from the files its configuration names.

Loaded once, when the broker starts (and by the command line when it validates the settings),
so that a missing or malformed file stops the broker with a message naming it.
"""

from __future__ import annotations

import ssl

import attrs

from .._auth import AuthConfigError, load_secret, load_tokens
from ._config import BrokerConfig


class SecurityConfigError(AuthConfigError):
    """A TLS, secret or tokens file that cannot be used."""


@attrs.frozen
class Security:
    secret: bytes | None = attrs.field(default=None, repr=False)
    tokens: frozenset[str] | None = attrs.field(default=None, repr=False)
    server_context: ssl.SSLContext | None = None
    client_context: ssl.SSLContext | None = None

    def describe(self) -> dict[str, str]:
        """What is on, for the start-up log: never the secret or the tokens themselves."""
        return {
            "tls": "on" if self.server_context is not None else "off",
            "cluster_secret": "set" if self.secret is not None else "unset",
            "client_tokens": str(len(self.tokens)) if self.tokens is not None else "off",
        }


def client_context(ca: str | None) -> ssl.SSLContext:
    """A context that checks the server's certificate (against ``ca``, or the system's CAs)
    and that its name or IP address is the host dialed."""
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"cannot load CA bundle {ca}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_security(config: BrokerConfig) -> Security:
    try:
        secret = (
            None if config.cluster_secret_file is None else load_secret(config.cluster_secret_file)
        )
        tokens = (
            None if config.client_tokens_file is None else load_tokens(config.client_tokens_file)
        )
    except AuthConfigError as exc:
        raise SecurityConfigError(str(exc)) from None
    server = client = None
    if config.tls_cert is not None:
        assert config.tls_key is not None  # BrokerConfig checks they go together
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            server.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SecurityConfigError(
                f"cannot load TLS certificate {config.tls_cert} with key {config.tls_key}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        client = client_context(None if config.tls_ca is None else str(config.tls_ca))
    return Security(secret, tokens, server, client)
