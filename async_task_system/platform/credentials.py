"""Per-agent credentials: a token per agent name, stored hashed, checked by the hubs from memory.

:class:`AgentCredentials` is the repository of the ``agent_credentials`` table (revision 0004);
:class:`AgentTokens` is what the platform hands its hubs: a checker ``(name, token) -> bool | None``
answering from an in-memory map that :meth:`AgentTokens.issue` and :meth:`AgentTokens.revoke` keep
fresh, so a hub's event loop never waits for the database.

A token is ``aat_`` followed by 32 random bytes (``secrets.token_urlsafe(32)``); the store keeps its
SHA-256 hex digest, never the token. A slow, salted KDF (scrypt, PBKDF2) protects secrets people
choose, which can be guessed; a 256-bit random token cannot be, so its plain digest is as strong, and
it can be looked up: a hub refuses a token that is no agent's before the connection opens (HTTP 401,
gRPC ``UNAUTHENTICATED``), at the cost of one SHA-256 instead of tens of milliseconds of KDF work per
attempt -- which a hostile client could otherwise make the hub spend at will.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from typing import Any

import sqlalchemy as sa

from .database import Database
from .schema import AgentCredential, utcnow

__all__ = ["AgentCredentials", "AgentTokens", "TOKEN_PREFIX", "token_digest"]

TOKEN_PREFIX = "aat_"
"""What every agent token starts with (so a leaked one is recognisable in logs and scanners)."""


def token_digest(token: str) -> str:
    """The stored form of a token: its SHA-256 as 64 hex digits."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class AgentCredentials:
    """The ``agent_credentials`` table: issue (revoking the previous one), revoke, read the live ones."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def issue(self, agent_id: str) -> tuple[str, AgentCredential]:
        """A new token for ``agent_id`` (its previous live one revoked in the same transaction) and its row."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = AgentCredential(agent_id=agent_id, token_sha256=token_digest(token), created_at=now)
        with self.store.session() as session:
            session.execute(self._revoking(agent_id, now))
            session.add(row)
        return token, row

    def revoke(self, agent_id: str) -> bool:
        """Revoke ``agent_id``'s live credential; False when it had none."""
        with self.store.engine.begin() as connection:
            return connection.execute(self._revoking(agent_id, utcnow())).rowcount > 0

    def live(self) -> list[AgentCredential]:
        """Every live (not revoked) credential, oldest first."""
        query = (
            sa.select(AgentCredential)
            .where(AgentCredential.revoked_at.is_(None))
            .order_by(AgentCredential.created_at, AgentCredential.id)
        )
        with self.store.sessions() as session:
            return list(session.scalars(query))

    def history(self, agent_id: str) -> list[AgentCredential]:
        """Every credential ever issued to ``agent_id``, oldest first (revoked ones included)."""
        query = (
            sa.select(AgentCredential)
            .where(AgentCredential.agent_id == agent_id)
            .order_by(AgentCredential.created_at, AgentCredential.id)
        )
        with self.store.sessions() as session:
            return list(session.scalars(query))

    @staticmethod
    def _revoking(agent_id: str, now: Any) -> Any:
        return (
            sa.update(AgentCredential)
            .where(AgentCredential.agent_id == agent_id, AgentCredential.revoked_at.is_(None))
            .values(revoked_at=now)
        )


class AgentTokens:
    """The hubs' credential checker: the live credentials in memory, kept fresh by issue and revoke.

    ``tokens(name, token)`` is True when ``token`` is ``name``'s live token, False when ``name`` has a
    live credential and this is not its token, None when ``name`` has none (the hub then applies the
    shared token, or refuses when agent tokens are required). :meth:`known` says whether a token is
    any agent's live token (the hubs ask before the first frame). Both read memory only, under a lock
    held for a dict lookup: safe on a hub's event loop.
    """

    def __init__(self, credentials: AgentCredentials) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()
        self._by_name: dict[str, str] = {}  # agent -> digest of its live token
        self._by_digest: dict[str, str] = {}  # digest -> agent
        self.reload()

    def reload(self) -> None:
        """Read the live credentials from the store (at start; newest wins if two are live)."""
        by_name = {row.agent_id: row.token_sha256 for row in self.credentials.live()}
        with self._lock:
            self._by_name = by_name
            self._by_digest = {digest: name for name, digest in by_name.items()}

    def __call__(self, name: str, token: str) -> bool | None:
        with self._lock:
            stored = self._by_name.get(name)
        if stored is None:
            return None
        return hmac.compare_digest(stored.encode(), token_digest(token).encode())

    def known(self, token: str) -> bool:
        """Whether ``token`` is some agent's live token."""
        if not token.startswith(TOKEN_PREFIX):
            return False
        digest = token_digest(token)
        with self._lock:
            name = self._by_digest.get(digest)
            stored = self._by_name.get(name) if name is not None else None
        return stored is not None and hmac.compare_digest(stored.encode(), digest.encode())

    def has(self, name: str) -> bool:
        """Whether ``name`` has a live credential."""
        with self._lock:
            return name in self._by_name

    def names(self) -> list[str]:
        """The agents with a live credential, sorted."""
        with self._lock:
            return sorted(self._by_name)

    def issue(self, name: str) -> tuple[str, AgentCredential]:
        """Store a new token for ``name`` (revoking its previous one), then check with it; (token, row)."""
        token, row = self.credentials.issue(name)
        with self._lock:
            old = self._by_name.pop(name, None)
            if old is not None:
                self._by_digest.pop(old, None)
            self._by_name[name] = row.token_sha256
            self._by_digest[row.token_sha256] = name
        return token, row

    def revoke(self, name: str) -> bool:
        """Revoke ``name``'s credential in the store, then stop accepting it; False if it had none."""
        revoked = self.credentials.revoke(name)
        with self._lock:
            old = self._by_name.pop(name, None)
            if old is not None:
                self._by_digest.pop(old, None)
        return revoked or old is not None
