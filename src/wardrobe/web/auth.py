"""Telegram Mini App authentication: `Authorization: tma <initDataRaw>` validated as Telegram specifies.

Also builds init data for a user (`sign_init_data`), for `make token`, tests and the load generator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable

MAX_HEADER_BYTES = 8192


class AuthError(Exception):
    """The init data is missing, malformed, forged or too old; the message is safe to show."""


@dataclasses.dataclass(frozen=True)
class TelegramUser:
    id: int
    display_name: str
    username: str | None


def _secret_key(bot_token: str) -> bytes:
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def _data_check_string(pairs: list[tuple[str, str]]) -> str:
    return "\n".join(sorted(f"{k}={v}" for k, v in pairs if k != "hash"))


class InitDataValidator:
    def __init__(
        self, bot_token: str, max_age: int, clock: Callable[[], float] = time.time, remember: int = 10_000
    ) -> None:
        self._secret = _secret_key(bot_token)
        self._max_age = max_age
        self._clock = clock
        # A Mini App sends the same init data with every request of a session: once its signature checked out,
        # the exact same string needs only the freshness check again (parsing + HMAC are most of auth's cost).
        self._verified: OrderedDict[str, tuple[TelegramUser, int]] = OrderedDict()
        self._remember = remember

    def authenticate(self, header: str | None) -> TelegramUser:
        if not header:
            raise AuthError("Send 'Authorization: tma <initData>'.")
        if len(header) > MAX_HEADER_BYTES:
            raise AuthError("Authorization header is too large.")
        scheme, _, raw = header.strip().partition(" ")
        if scheme.lower() != "tma" or not raw.strip():
            raise AuthError("Authorization scheme must be 'tma'.")
        return self.validate(raw.strip())

    def validate(self, raw: str) -> TelegramUser:
        known = self._verified.get(raw)
        if known is not None:
            user, auth_date = known
            self._check_age(auth_date)
            return user
        user, auth_date = self._validate(raw)
        self._verified[raw] = (user, auth_date)
        if len(self._verified) > self._remember:
            self._verified.popitem(last=False)
        return user

    def _check_age(self, auth_date: int) -> None:
        if self._max_age and self._clock() - auth_date > self._max_age:
            raise AuthError("Init data has expired; reopen the Mini App.")

    def _validate(self, raw: str) -> tuple[TelegramUser, int]:
        try:
            # WSGI hands headers over as latin-1; anything beyond ASCII here is not Telegram's.
            raw.encode("ascii")
            pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, errors="strict")
        except (UnicodeError, ValueError):
            raise AuthError("Init data is not a valid query string.") from None
        fields = dict(pairs)
        received = fields.get("hash", "")
        if not received or len(pairs) != len(fields):
            raise AuthError("Init data has no hash or repeats a field.")
        expected = hmac.new(self._secret, _data_check_string(pairs).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), received.encode("utf-8", "replace")):
            raise AuthError("Init data signature is invalid.")
        try:
            auth_date = int(fields.get("auth_date", ""))
        except ValueError:
            raise AuthError("Init data has no valid auth_date.") from None
        self._check_age(auth_date)
        try:
            user = json.loads(fields["user"])
            user_id = user["id"]
        except (KeyError, TypeError, ValueError):
            raise AuthError("Init data has no valid user.") from None
        if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id < 2**63:
            raise AuthError("Init data has no valid user id.")
        name = " ".join(str(user.get(k) or "") for k in ("first_name", "last_name")).strip()
        username = user.get("username")
        user = TelegramUser(
            id=user_id,
            display_name=name[:128],
            username=username[:64] if isinstance(username, str) else None,
        )
        return user, auth_date


def sign_init_data(
    bot_token: str,
    user: dict,
    *,
    auth_date: int | None = None,
    query_id: str = "AAHdF6IQAAAAAN0XohDhrOrc",
) -> str:
    """Init data exactly as a Mini App receives it for `user`, signed with `bot_token`."""
    pairs = [
        ("auth_date", str(int(time.time()) if auth_date is None else auth_date)),
        ("query_id", query_id),
        ("user", json.dumps(user, separators=(",", ":"), ensure_ascii=False)),
    ]
    digest = hmac.new(_secret_key(bot_token), _data_check_string(pairs).encode(), hashlib.sha256).hexdigest()
    return urllib.parse.urlencode([*pairs, ("hash", digest)])
