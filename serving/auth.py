"""Who is calling the device: the operator, or one user holding a token the operator issued (docs/security.md).

Credentials travel as ``Authorization: Bearer <credential>`` (or ``X-API-Key: <credential>``):

- the **operator key** (``serve.operator_key`` / ``$PERSONA_OPERATOR_KEY``) may do everything: issue user
  tokens, act for any user (bulk ingestion from a trusted backend), cut the cloud, read ``/metrics``;
- a **user token** covers exactly one user id until it expires. It is a signed claim, not a stored secret:
  ``pt1.<base64url(user_id)>.<expiry unix s>.<base64url(HMAC-SHA256)>``, keyed by a key derived from the operator
  key. Any worker process verifies it with no database and no shared state, and rotating the operator key
  revokes every token at once.

Comparisons are constant-time; a malformed or foreign credential is simply not valid (401), never a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

PREFIX = "pt1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the operator (every user) or one user."""

    operator: bool
    user_id: str | None = None

    def covers(self, user_id: str) -> bool:
        return self.operator or user_id == self.user_id


class Credentials:
    """The device's operator key and the user tokens signed with a key derived from it."""

    def __init__(self, operator_key: str):
        if not operator_key:
            raise ValueError("the operator key must not be empty")
        self._operator = operator_key.encode()
        self._signing = hashlib.sha256(b"persona user token v1|" + self._operator).digest()

    def issue(self, user_id: str, ttl_s: int, now: float | None = None) -> tuple[str, int]:
        """A token for ``user_id`` valid for ``ttl_s`` seconds: ``(token, expires_at)``."""
        expires = int(now if now is not None else time.time()) + int(ttl_s)
        claim = f"{PREFIX}.{_b64(user_id.encode())}.{expires}"
        return f"{claim}.{self._sign(claim)}", expires

    def caller(self, credential: str, now: float | None = None) -> Caller | None:
        """Who ``credential`` is (None: nobody — unknown, tampered, expired or malformed)."""
        given = credential.encode("utf-8", "surrogatepass")
        if hmac.compare_digest(given, self._operator):
            return Caller(operator=True)
        user = self._verify(credential, time.time() if now is None else now)
        return None if user is None else Caller(operator=False, user_id=user)

    def _sign(self, claim: str) -> str:
        return _b64(hmac.new(self._signing, claim.encode(), hashlib.sha256).digest())

    def _verify(self, token: str, now: float) -> str | None:
        parts = token.split(".") if token.isascii() else []  # tokens are base64url and digits only
        if len(parts) != 4 or parts[0] != PREFIX or not parts[2].isdigit():
            return None
        claim = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(claim).encode(), parts[3].encode()):
            return None
        if int(parts[2]) <= now:
            return None
        try:
            return _unb64(parts[1]).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
