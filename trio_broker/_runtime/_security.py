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
    if tokens is not None and secret is None and not config.allow_open_peers:
        raise SecurityConfigError(
            "client tokens without a cluster secret leave broker-to-broker requests (join, "
            "replicate, vote, change the membership) open to anyone who can connect: give a "
            "cluster secret file too (the same for every member), or allow open peers "
            "explicitly (--allow-open-peers; docs/security.md)"
        )
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


AUTH_DELAY_FIRST = 0.1
AUTH_DELAY_MAX = 5.0
"""Seconds an AUTH failure's answer waits: doubling with each failure, capped."""
AUTH_FAILURES_PER_CONNECTION = 5
"""AUTH failures after which the broker closes the connection."""
AUTH_ADDRESS_WINDOW = 600.0
"""Seconds after its last failure that an address's failures are forgotten."""
AUTH_MAX_ADDRESSES = 4096
"""Addresses remembered; beyond, the one whose last failure is oldest is forgotten."""


@attrs.define
class _Guesser:
    failures: int = 0
    last: float = 0.0
    not_before: float = 0.0
    """Failures from this address are answered one at a time, no earlier than this."""


class AuthThrottle:
    """Slows repeated AUTH failures, per connection and per remote address (docs/security.md).

    Each failure's answer waits ``first * 2**(n-1)`` seconds (capped at ``cap``), ``n`` being
    the larger of the connection's and the address's failure counts; an address's failures are
    answered one after another, so parallel connections gain nothing. Successes are never
    delayed. The connection is closed after ``per_connection`` failures. Memory: at most
    ``max_addresses`` entries.
    """

    def __init__(
        self,
        *,
        first: float = AUTH_DELAY_FIRST,
        cap: float = AUTH_DELAY_MAX,
        per_connection: int = AUTH_FAILURES_PER_CONNECTION,
        max_addresses: int = AUTH_MAX_ADDRESSES,
        window: float = AUTH_ADDRESS_WINDOW,
    ) -> None:
        self.first = first
        self.cap = cap
        self.per_connection = per_connection
        self.max_addresses = max_addresses
        self.window = window
        self.max_wait = 4 * cap
        """An address whose failures queue longer than this has its next failing connection
        closed without an answer (many connections guessing in parallel)."""
        self._addresses: dict[str, _Guesser] = {}
        """Insertion order is the order of last failure: the first is the oldest."""

    def __len__(self) -> int:
        return len(self._addresses)

    def failed(self, address: str, connection_failures: int, now: float) -> float | None:
        """Record one failure; the delay (seconds from ``now``) before answering it, or None
        when the address already has too many failures waiting (close without answering)."""
        entry = self._addresses.pop(address, None)
        if entry is None or now - entry.last > self.window:
            entry = _Guesser()
        entry.failures += 1
        entry.last = now
        self._addresses[address] = entry  # now the newest
        while len(self._addresses) > self.max_addresses:
            del self._addresses[next(iter(self._addresses))]
        exponent = max(entry.failures, connection_failures) - 1
        delay = min(self.first * 2 ** min(exponent, 32), self.cap)
        answer_at = max(now, entry.not_before) + delay
        if answer_at - now > self.max_wait:
            return None
        entry.not_before = answer_at
        return answer_at - now

    def failures(self, address: str) -> int:
        entry = self._addresses.get(address)
        return 0 if entry is None else entry.failures
