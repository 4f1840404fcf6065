"""Authentication on the wire: the cluster secret's challenge/response, and client tokens.

Shared by the broker (which checks) and by everything that dials a broker (peer links, joins,
snapshot fetches, forwarded requests, the client library and the CLI), which proves.

The secret itself never travels. A connection asks ``AUTH_CHALLENGE`` for a fresh random
nonce; ``AUTH`` then carries ``proof = HMAC-SHA256(secret, PROOF_LABEL + nonce)``. The broker
forgets the nonce as soon as one proof was checked against it, so a proof seen on the wire is
worth nothing later (replay), and a proof is bound to the connection that asked for its nonce.
See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import trio

from ._protocol import Auth, AuthChallenge, FrameDecoder, encode_frame, encode_request, loads_object

PROOF_LABEL = b"trio_broker AUTH v1\x00"
"""Domain separation: the HMAC of a nonce under the secret means nothing else."""
NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_TOKEN_LENGTH = 128
"""Tokens travel as wire strings, which the codec bounds to 128 characters."""


class AuthConfigError(ValueError):
    """A secret or tokens file that cannot be used; the message says which and why."""


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof_for(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, PROOF_LABEL + nonce.encode(), hashlib.sha256).hexdigest()


def proof_is_valid(secret: bytes, nonce: str, proof: str) -> bool:
    return hmac.compare_digest(proof_for(secret, nonce).encode(), proof.encode())


def token_is_valid(tokens: frozenset[str], token: str) -> bool:
    """Compare against every token, in constant time each, without stopping at a match."""
    found = False
    for known in tokens:
        found |= hmac.compare_digest(known.encode(), token.encode())
    return found


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The cluster secret: the file's bytes, surrounding whitespace removed."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise AuthConfigError(f"cannot read cluster secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthConfigError(
            f"cluster secret file {path} holds {len(secret)} bytes; at least "
            f"{MIN_SECRET_BYTES} are needed (make one with: openssl rand -hex 32)"
        )
    return secret


def load_tokens(path: str | os.PathLike[str]) -> frozenset[str]:
    """Client tokens: one per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AuthConfigError(f"cannot read client tokens file {path}: {reason}") from None
    tokens = set()
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthConfigError(
                f"{path}:{number}: a token is at most {MAX_TOKEN_LENGTH} characters"
            )
        tokens.add(token)
    if not tokens:
        raise AuthConfigError(f"client tokens file {path} holds no token")
    return frozenset(tokens)


def load_token(path: str | os.PathLike[str]) -> str:
    """A client's own token: the first token line of the file (same format)."""
    load_tokens(path)  # the same checks and messages
    for line in Path(path).read_text().splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise AssertionError("unreachable: load_tokens found a token")  # pragma: no cover


async def _call(stream: trio.abc.Stream, decoder: FrameDecoder, *requests: Any) -> list[dict]:
    await stream.send_all(b"".join(encode_frame(encode_request(r)) for r in requests))
    answers = []
    while len(answers) < len(requests):
        payload = decoder.next_frame()
        if payload is None:
            data = await stream.receive_some(1 << 16)
            if not data:
                raise ConnectionError("connection closed during authentication")
            decoder.feed(data)
            continue
        answers.append(loads_object(payload))
    return answers


async def authenticate(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    *,
    secret: bytes | None = None,
    token: str | None = None,
    then: Any = None,
) -> dict[str, Any]:
    """Authenticate a fresh connection: prove the secret (if given), present the token (if
    given), then send ``then`` (if given) in the same write as the last AUTH.

    Returns the first error answer met, or the answer to ``then`` (an empty dict without it).
    Raises what the stream raises (the connection is then unusable).
    """
    if secret is not None:
        (challenge,) = await _call(stream, decoder, AuthChallenge())
        nonce = challenge.get("nonce")
        if challenge.get("status") != "success" or not isinstance(nonce, str):
            return challenge
        requests: list[Any] = [Auth(proof=proof_for(secret, nonce))]
        if token is not None:
            requests.append(Auth(token=token))
    else:
        requests = [Auth(token=token)] if token is not None else []
    if then is not None:
        requests.append(then)
    if not requests:
        return {}
    answers = await _call(stream, decoder, *requests)
    for answer in answers[: len(answers) - (then is not None)]:
        if answer.get("status") != "success":
            return answer
    return answers[-1] if then is not None else {}
