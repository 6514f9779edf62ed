"""Owners: who a request is, and which jobs are whose.

An owner is a random 128-bit id, anonymous: no account, no password. A client proves it with the
owner token, the id signed with the server's secret (itsdangerous' `TimestampSigner`): in the page's
`HttpOnly` cookie, or in the `X-Owner-Token` header for scripts (backend/api/identity.py). A token
that does not verify (tampered, expired, signed with another key) is no identity at all: the caller
gets a fresh owner, never someone else's.

The secret is `NCA_SECRET_KEY`; unset, one is generated once and kept in Redis (`nca:secret`, set
with NX so that every replica ends up with the same), so a plain `make run` or `docker compose up`
keeps its owners across restarts of the services (not across a wipe of Redis).

Keys (backend.storage.keys): `nca:job:<id>:owner` (the job's owner), `nca:owner:<owner>:jobs`
(sorted set: the owner's jobs by creation time, what a listing reads a page at a time, `index`, however
many jobs other owners have) and `nca:owners:minted:<address>` (owners created from an address in the
current hour, the rate limit that keeps clearing cookies from multiplying quotas).
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass, field

import redis
from itsdangerous import BadSignature, TimestampSigner

from . import keys
from .connection import text
from .listing import IndexSource

OWNER_PATTERN = re.compile(r"[0-9a-f]{32}")
TOKEN_SALT = "nca-owner"
MINT_WINDOW_SECONDS = 3600


@dataclass(frozen=True)
class Caller:
    """Who asks: an owner (None: nobody yet), whether it is the operator, and the share tokens it presents."""

    owner: str | None = None
    admin: bool = False
    shares: frozenset[str] = field(default_factory=frozenset)


class TooManyOwners(Exception):
    """This address created its hourly share of owners; the message says when to try again."""

    def __init__(self, limit: int, retry_after: int):
        super().__init__(f"too many new owners from your address ({limit} an hour): keep the cookie or the "
                         f"owner token you were given (GET /api/me shows it) and send it, or try again in "
                         f"{retry_after} s")
        self.retry_after = retry_after


def owner_key(owner: str) -> str:
    return keys.OWNER_JOBS.prefix + owner + ":jobs"


class Owners:
    """Tokens, minting and the owner <-> job index."""

    def __init__(self, client: redis.Redis, secret_key: str = "", token_days: float = 365.0,
                 mint_per_hour: int = 100):
        self._client, self._configured = client, secret_key
        self.token_seconds, self.mint_per_hour = int(token_days * 86400), mint_per_hour
        self._signer: TimestampSigner | None = None

    # --- tokens ---------------------------------------------------------------------------

    def secret(self) -> str:
        """NCA_SECRET_KEY, else the one kept in Redis (the first replica to ask writes it)."""
        if self._configured:
            return self._configured
        self._client.set(keys.SECRET.pattern, secrets.token_urlsafe(48), nx=True)
        return text(self._client.get(keys.SECRET.pattern))

    def _sign(self) -> TimestampSigner:
        if self._signer is None:
            self._signer = TimestampSigner(self.secret(), salt=TOKEN_SALT)
        return self._signer

    def token(self, owner: str) -> str:
        """The owner token: `<owner id>.<timestamp>.<signature>`; it verifies for NCA_OWNER_TOKEN_DAYS."""
        return self._sign().sign(owner).decode()

    def owner_of_token(self, token: str | None) -> str | None:
        """The owner a token names, or None for no token, a tampered, expired or foreign one."""
        if not token or len(token) > 200:
            return None
        try:
            owner = self._sign().unsign(token, max_age=self.token_seconds).decode()
        except (BadSignature, UnicodeDecodeError):  # SignatureExpired is a BadSignature
            return None
        return owner if OWNER_PATTERN.fullmatch(owner) else None

    def mint(self, address: str) -> str:
        """A new owner id; TooManyOwners once `address` created `mint_per_hour` of them this hour."""
        key = keys.OWNERS_MINTED.prefix + address
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=MINT_WINDOW_SECONDS, nx=True)  # the hour starts with its first owner
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = pipe.execute()
        if count > self.mint_per_hour:
            raise TooManyOwners(self.mint_per_hour, max(int(ttl), 1))
        return secrets.token_hex(16)

    # --- the owner <-> job index ------------------------------------------------------------

    def claim(self, job_id: str, owner: str, created_at: float | None = None) -> None:
        """Record `owner` as the job's; before the job is created, so that it is never ownerless."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(keys.job_key(job_id, "owner"), owner)
            pipe.zadd(owner_key(owner), {job_id: time.time() if created_at is None else created_at})
            pipe.execute()

    def owner_of(self, job_id: str) -> str | None:
        """The job's owner; None for a job from before owners existed, or no job."""
        return text(self._client.get(keys.job_key(job_id, "owner")))

    def owners_of(self, job_ids: list[str]) -> list[str | None]:
        """Each job's owner, in one round trip."""
        if not job_ids:
            return []
        return [text(o) for o in self._client.mget([keys.job_key(j, "owner") for j in job_ids])]

    def index(self, owner: str) -> IndexSource:
        """The owner's jobs, newest first, to read a page at a time (backend.storage.listing)."""
        return IndexSource(self._client, owner_key(owner))


# --- how a request says who it is (the API and the stream read it alike) -----------------------

COOKIE = "nca_owner"  # the signed owner token, HttpOnly, SameSite=Lax
SHARES_COOKIE = "nca_shares"  # the share links this browser opened, comma-separated (read-only access)
OWNER_HEADER = "x-owner-token"  # an API client's owner token (or the operator's NCA_ADMIN_TOKEN)
SHARE_HEADER = "x-share-token"
SHARE_PARAM = "share"  # ?share=<token> on any read (a player or video link made from a share link)
OWNER_TOKEN_PREFIX_LEN = 33  # `<32 hex>.`: how an owner token in `Authorization: Bearer` is told from the access one


def looks_like_owner_token(value: str) -> bool:
    return len(value) > OWNER_TOKEN_PREFIX_LEN and OWNER_PATTERN.fullmatch(value[:32]) is not None \
        and value[32] == "."


def share_tokens(*sources: str | None) -> frozenset[str]:
    """Share tokens from a cookie (comma-separated), a header and a query parameter; at most a few."""
    found: list[str] = []
    for source in sources:
        if source:
            found += [t.strip() for t in source.split(",") if 0 < len(t.strip()) <= 64]
    return frozenset(found[:20])


def identify(owners: Owners, token: str | None, shares: frozenset[str], admin_token: str) -> Caller:
    """The caller a token names: the operator (NCA_ADMIN_TOKEN), an owner, or nobody (None, bad token)."""
    if token and admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Caller(owner=None, admin=True, shares=shares)
    return Caller(owner=owners.owner_of_token(token), shares=shares)
