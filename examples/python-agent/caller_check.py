"""Who may start a run. With AUTH_JWKS_URL set, every call must carry the gateway's service
token, `authorization: Bearer <JWT>`: signed with EdDSA by a key that auth-service publishes in
its JWKS, issued by auth-service, meant for this agent (`aud` = AGENT_NAME), within its
validity window, and holding the `agent.run` scope (the space-separated `scope` claim).

The checks that cost nothing (size, header, algorithm, key id) come before any key lookup, as
in the Rust services. Refusals name a machine-readable reason (the `tollgate-reason` trailer,
the same codes auth-service uses) and never echo the token.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import jwt

from jsonlog import log

SCOPE = "agent.run"
ALGORITHM = "EdDSA"
TOKEN_TYPE = "at+jwt"
MAX_TOKEN_BYTES = 8 * 1024
LEEWAY_S = 30
# Each JWKS fetch; a call waits at most this long for auth-service.
JWKS_TIMEOUT_S = 5.0
# Keys are re-read this often, and a token with an unknown `kid` forces a re-read at most
# once per cooldown, so garbage tokens cannot turn into a flood of fetches.
JWKS_LIFESPAN_S = 300.0
JWKS_COOLDOWN_S = 5.0
PLAUSIBLE_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")
REASON_METADATA = "tollgate-reason"


class Rejected(Exception):
    """The caller may not run: `code` and the machine-readable `reason`."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unauthenticated(reason: str) -> Rejected:
    return Rejected(grpc.StatusCode.UNAUTHENTICATED, reason)


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization` value in the Bearer scheme (case-insensitive)."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _reason_of(err: jwt.PyJWTError) -> str:
    # Most specific first: the expiry and issuer errors are InvalidTokenErrors too.
    for kind, reason in (
        (jwt.ExpiredSignatureError, "token_expired"),
        (jwt.ImmatureSignatureError, "token_not_yet_valid"),
        (jwt.InvalidIssuerError, "wrong_issuer"),
        (jwt.InvalidAudienceError, "wrong_audience"),
        (jwt.InvalidSignatureError, "bad_signature"),
        (jwt.InvalidAlgorithmError, "unsupported_algorithm"),
    ):
        if isinstance(err, kind):
            return reason
    return "token_malformed"


class CallerCheck:
    def __init__(self, jwks_url: str, audience: str, issuer: str) -> None:
        self._audience = audience
        self._issuer = issuer
        self._jwks = jwt.PyJWKClient(
            jwks_url,
            cache_keys=True,
            lifespan=JWKS_LIFESPAN_S,
            timeout=JWKS_TIMEOUT_S,
            cooldown_duration=JWKS_COOLDOWN_S,
        )

    async def verify(self, context: Any) -> None:
        """Returns when the caller may run; aborts the call otherwise."""
        values = [
            value
            for key, value in (context.invocation_metadata() or ())
            if key.lower() == "authorization"
        ]
        try:
            if len(values) != 1 or not isinstance(values[0], str):
                raise _unauthenticated("token_missing" if not values else "token_malformed")
            token = bearer(values[0])
            if token is None:
                raise _unauthenticated("token_missing")
            # The key lookup may fetch the JWKS over HTTP: off the event loop.
            await asyncio.to_thread(self._check, token)
        except Rejected as rejected:
            log("caller_refused", code=rejected.code.name, reason=rejected.reason)
            await context.abort(
                rejected.code,
                f"the caller is not allowed to run this agent: {rejected.reason}",
                trailing_metadata=((REASON_METADATA, rejected.reason),),
            )

    def _check(self, token: str) -> None:
        if len(token) > MAX_TOKEN_BYTES:
            raise _unauthenticated("token_too_large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise _unauthenticated("token_malformed") from err
        if header.get("alg") != ALGORITHM:
            raise _unauthenticated("unsupported_algorithm")
        if header.get("typ") != TOKEN_TYPE:
            raise _unauthenticated("wrong_token_type")
        kid = header.get("kid")
        if not isinstance(kid, str) or not PLAUSIBLE_KID.fullmatch(kid):
            raise _unauthenticated("unknown_key")
        try:
            key = self._jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as err:
            raise Rejected(grpc.StatusCode.UNAVAILABLE, "keys_unavailable") from err
        except jwt.PyJWTError as err:
            raise _unauthenticated("unknown_key") from err
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise _unauthenticated(_reason_of(err)) from err
        scope = claims.get("scope")
        if not isinstance(scope, str) or SCOPE not in scope.split(" "):
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "insufficient_scope")
