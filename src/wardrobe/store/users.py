"""Users and their profiles: every SQL statement about the users table lives here."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg2.extras import Json

from wardrobe.clients.cache import MISSING
from wardrobe.store.db import Pool

if TYPE_CHECKING:
    from wardrobe.web.auth import TelegramUser

_PROFILE_FIELDS = ("style", "sizes", "favourite_colors", "gender")
T = TypeVar("T")
# The one statement that raises a user's version; `{also}` narrows it further (bump_version_when).
_BUMP = (
    "UPDATE users SET wardrobe_version = wardrobe_version + 1 WHERE id = %s{also} RETURNING wardrobe_version"
)
_BUMP_ONE = _BUMP.format(also="")


def bump_version(cur: Any, user_id: int) -> int:
    """Called inside every transaction that changes what a user sees; the new version keys their caches."""
    cur.execute(_BUMP_ONE, (user_id,))
    row = cur.fetchone()
    if row is None:
        return 0
    noted_bumped(cur, user_id, row["wardrobe_version"])
    return row["wardrobe_version"]


def bump_version_when(changed: str) -> str:
    """`bump_version` as a data-modifying CTE, for a write that is one statement with its bump (one round trip
    instead of two): it raises the version when the CTE named `changed` returned rows, and returns it as
    `wardrobe_version`. Its one parameter is the user's id; pass what it returns to `noted_bumped`."""
    return _BUMP.format(also=f" AND EXISTS (SELECT 1 FROM {changed})")


def noted_bumped(cur: Any, user_id: int, version: int) -> None:
    """Every bump is noted on the cursor of a PublishingPool's transaction (which tells memcached once the
    commit is done) and of the replica router's (which marks the user's write)."""
    noted = getattr(cur, "bumped_versions", None)
    if noted is not None:
        noted[user_id] = max(version, noted.get(user_id, 0))


class VersionCache:
    """Each user's wardrobe version in memcached, so a list read needs no Postgres round trip to key its cache.

    Why not on the authenticated user: the auth middleware skips the users table after a user's first sight, so
    carrying the version there would add a Postgres read to every request, lists or not. Why it is off by
    default (`WARDROBE_VERSION_CACHE_TTL=0`): a memcached get costs the client about what a pooled SELECT does
    (a round trip is mostly kernel time on these machines), so the saving is only the page's own round trip
    (`get_with`), and each write pays two more (`raise_to`); on one box the session mix measured 4-7 % more API
    CPU per request with it. It takes Postgres out of every list read, which may pay where Postgres is a shared,
    remote box (not measured here; bench/README.md, "The version round trip").

    Postgres stays the truth. A write raises the memcached copy after its commit (`PublishingPool`); a miss reads
    Postgres and `add`s what it read, which never overwrites; `raise_to` never lowers a version. Whatever the
    order of a reader's fill and writers' raises, memcached ends at the highest committed version, so a write is
    seen by the next request from any backend. When memcached cannot be told, the key is deleted so readers go
    to Postgres; if even that fails, `ttl` bounds how long a backend may read the older version.
    """

    KIND = "version"

    def __init__(self, cache: Any, ttl: int) -> None:
        self._cache = cache
        self._ttl = ttl

    def _key(self, user_id: int) -> str:
        return self._cache.key(self.KIND, user_id)

    def get(self, user_id: int) -> int | None:
        value = self._cache.get(self._key(user_id), self.KIND)
        # A failing HashClient node answers None; anything but a number is a miss.
        return value if type(value) is int else None

    def get_with(self, user_id: int, key: str, kind: str) -> tuple[int | None, Any]:
        """The user's version and the value under `key` (MISSING if absent), in one memcached round trip."""
        version_key = self._key(user_id)
        found = self._cache.get_many([version_key, key], kind, kinds={version_key: self.KIND})
        version = found.get(version_key)
        return (version if type(version) is int else None), found.get(key, MISSING)

    def fill(self, user_id: int, version: int) -> None:
        self._cache.add(self._key(user_id), version, self._ttl, self.KIND)

    def publish(self, versions: dict[int, int]) -> None:
        for user_id, version in versions.items():
            if not self._cache.raise_to(self._key(user_id), version, self._ttl, self.KIND):
                self._cache.delete(self._key(user_id), self.KIND)

    def forget(self, user_ids: Any) -> None:
        for user_id in user_ids:
            self._cache.delete(self._key(user_id), self.KIND)

    def publishing(self, pool: Pool) -> PublishingPool:
        return PublishingPool(pool, self)


class PublishingPool:
    """A Pool whose units of work tell the VersionCache every version they bumped, once they committed.

    Anything else is the wrapped pool's. Repositories that write (Items, Capsules, Users) run on this one, in the
    API and in the workers alike, so no write path can bump a version that memcached does not hear about.
    """

    def __init__(self, pool: Pool, versions: VersionCache) -> None:
        self._pool = pool
        self._versions = versions

    def run(self, work: Callable[[Any], T], *, transaction: bool = True) -> T:
        bumped: dict[int, int] = {}

        def noted(cur: Any) -> T:
            bumped.clear()  # a retry on a fresh connection starts over
            cur.bumped_versions = bumped
            return work(cur)

        try:
            result = self._pool.run(noted, transaction=transaction)
        except BaseException:
            # Perhaps committed (a connection lost during COMMIT): readers must ask Postgres.
            if bumped:
                self._versions.forget(bumped)
            raise
        if bumped:
            self._versions.publish(bumped)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class Users:
    def __init__(
        self, pool: Pool, known_capacity: int = 100_000, versions: VersionCache | None = None
    ) -> None:
        self._pool = pool
        self.versions = versions  # None: every version is read from Postgres
        # Ids known to have a row: after the first sight a request costs no write.
        self._known: OrderedDict[int, None] = OrderedDict()
        self._known_capacity = known_capacity
        self._lock = threading.Lock()

    def ensure(self, user: TelegramUser) -> None:
        with self._lock:
            if user.id in self._known:
                self._known.move_to_end(user.id)
                return

        def insert(cur: Any) -> None:
            cur.execute(
                "INSERT INTO users (id, display_name, username) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (user.id, user.display_name, user.username),
            )

        self._pool.run(insert, transaction=False)
        with self._lock:
            self._known[user.id] = None
            if len(self._known) > self._known_capacity:
                self._known.popitem(last=False)

    def forget(self, user_id: int) -> None:
        with self._lock:
            self._known.pop(user_id, None)

    def profile(self, user_id: int) -> dict[str, Any] | None:
        def select(cur: Any) -> Any:
            cur.execute(
                "SELECT id, display_name, username, profile, wardrobe_version, created_at FROM users WHERE id = %s",
                (user_id,),
            )
            return cur.fetchone()

        # A replica may not have replayed the row `ensure` has just inserted (that writes no version to mark).
        row = self._pool.read(user_id, select) or self._pool.run(select, transaction=False)
        return serialize(row) if row else None

    def version(self, user_id: int) -> int:
        if self.versions is not None:
            cached = self.versions.get(user_id)
            if cached is not None:
                return cached
        return self.stored_version(user_id)

    def stored_version(self, user_id: int) -> int:
        """The version in Postgres, which also goes to memcached for the next reads (never over a newer one)."""

        def select(cur: Any) -> Any:
            cur.execute("SELECT wardrobe_version FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

        row = self._pool.read(user_id, select)
        if row is None:
            return 0
        if self.versions is not None:
            self.versions.fill(user_id, row["wardrobe_version"])
        return row["wardrobe_version"]

    def capsule_context(self, user_id: int) -> dict[str, Any]:
        """What a capsule is built from besides the items: the preferences, and the version they belong to."""

        def select(cur: Any) -> Any:
            cur.execute("SELECT profile, wardrobe_version FROM users WHERE id = %s", (user_id,))
            return cur.fetchone()

        return self._pool.run(select, transaction=False) or {"profile": {}, "wardrobe_version": 0}

    def update_profile(self, user_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        prefs = {k: v for k, v in changes.items() if k in _PROFILE_FIELDS}

        def update(cur: Any) -> Any:
            cur.execute(
                """
                UPDATE users
                   SET display_name = COALESCE(%s, display_name),
                       profile = profile || %s,
                       wardrobe_version = wardrobe_version + 1,
                       updated_at = now()
                 WHERE id = %s
             RETURNING id, display_name, username, profile, wardrobe_version, created_at
                """,
                (changes.get("display_name"), Json(prefs), user_id),
            )
            row = cur.fetchone()
            if row is not None:
                noted_bumped(cur, user_id, row["wardrobe_version"])
            return row

        return serialize(self._pool.run(update))


def serialize(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "display_name": row["display_name"],
        "username": row["username"],
        "preferences": row["profile"],
        "created_at": row["created_at"].isoformat(),
    }
