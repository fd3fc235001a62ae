"""Fenced storage: make a store you control reject stale lock holders.

A lock acquired with ``fencing=True`` carries ``lock.fence``, an int strictly
larger than the fence of every earlier holder of the key (docs/fencing.md).  A
lease can run out while its holder is paused (GC, SIGSTOP, a slow network:
docs/faults.md rows 11 and 14), so the lock alone cannot protect the data.  The
storage must check the fence on every access and refuse one that went
backwards.  This module is that storage half; a fence here is just an int.

```python
from quorumlock.fencing import FencedStore, StaleFence

locks = LockManager([...lock nodes...], fencing=True)
store = FencedStore(redis.Redis(port=6400))      # a storage node, not a lock node
with locks.lock("account:7") as lock:
    seen = store.read("account:7", lock.fence)   # fenced read: raises the fence
    store.write("account:7", int(seen.value or 0) + 1, lock.fence)
```

* :class:`FencedStore` / :class:`AsyncFencedStore`: a Redis storage node
  (``redis.Redis`` / ``redis.asyncio.Redis``), same method names.
* :class:`SQLFencedTable`: one table, sqlite3 or PostgreSQL, over any DB-API
  connection (no driver is a dependency of quorumlock).

The contract, the same for every fenced operation of every store:

* accepted (``fence >= highest fence seen`` for the key, and for
  ``compare_and_set`` the value matched): the highest fence becomes ``fence``
  and a :class:`FencedResult` with ``status == "ok"`` is returned;
* stale (``fence < highest``): nothing changes; :class:`StaleFence` is raised,
  or, when the store was made with ``raise_on_stale=False``, a result with
  ``status == "stale"`` is returned;
* conflict (``compare_and_set`` only: fresh fence, other value): nothing
  changes; a result with ``status == "conflict"`` is returned (never raised:
  retrying with the value it carries is the normal next step).

docs/fencing-storage.md explains why reads must be fenced too, and what to do
with a storage you do not control.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple, Union

from .errors import QuorumLockError

__all__ = [
    "FencedResult",
    "StaleFence",
    "FencedStore",
    "AsyncFencedStore",
    "SQLFencedTable",
    "MAX_FENCE",
    "VALUE_FIELD",
    "FENCE_FIELD",
]

#: Largest fence accepted: a signed 64-bit integer, what a Redis integer reply
#: and a SQL ``BIGINT`` can carry.
MAX_FENCE = 2**63 - 1

#: The Redis layout: one hash per resource key, with these two fields.
VALUE_FIELD = b"value"
FENCE_FIELD = b"fence"

OK = "ok"
STALE = "stale"
CONFLICT = "conflict"

# Status codes the scripts return in their first array element.
_CODES = {0: OK, 1: STALE, 2: CONFLICT}

Value = Union[bytes, str, int]


# --------------------------------------------------------------------------
# results and errors
# --------------------------------------------------------------------------


class FencedResult:
    """What one fenced operation did.

    ``status``: ``"ok"``, ``"stale"`` or ``"conflict"`` (see the module
    docstring); ``ok``, ``stale`` and ``conflict`` are the same as booleans,
    and ``bool(result)`` is ``result.ok``.

    ``fence_seen``: the highest fence stored for the key once the operation
    ran: ``fence`` itself when accepted, the larger one that beat it when
    stale.  For a conflict it is the stored highest (``<= fence``; 0 when no
    fence was ever stored for the key).

    ``value``: what the operation read.  ``read``: the value (``None`` when the
    key has none); ``compare_and_set``: the current value when it conflicted;
    ``increment``: the new count (``int``).  ``None`` otherwise (``write``,
    ``delete``, a ``compare_and_set`` that succeeded, and every stale result:
    a stale holder learns nothing but the fence that beat it).  Values come
    back as the client returns strings: ``bytes``, or ``str`` from a Redis
    client made with ``decode_responses=True``.
    """

    __slots__ = ("status", "fence_seen", "value")

    def __init__(self, status: str, fence_seen: Optional[int], value: Any = None) -> None:
        self.status = status
        self.fence_seen = fence_seen
        self.value = value

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def stale(self) -> bool:
        return self.status == STALE

    @property
    def conflict(self) -> bool:
        return self.status == CONFLICT

    def __bool__(self) -> bool:
        return self.status == OK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FencedResult):
            return NotImplemented
        return (self.status, self.fence_seen, self.value) == (other.status, other.fence_seen, other.value)

    def __hash__(self) -> int:
        return hash((self.status, self.fence_seen, self.value))

    def __repr__(self) -> str:
        return f"FencedResult(status={self.status!r}, fence_seen={self.fence_seen!r}, value={self.value!r})"


class StaleFence(QuorumLockError):
    """A fenced operation carried a fence lower than one the storage has seen:
    a newer holder of the lock exists, and the work this holder was doing is no
    longer protected.  Nothing was changed.

    ``key``, ``fence`` (the one sent), ``fence_seen`` (the higher one stored),
    ``operation`` (``"write"``, ``"read"``, ...) and ``result`` (the
    :class:`FencedResult` that ``raise_on_stale=False`` would have returned)."""

    def __init__(self, operation: str, key: Any, fence: int, fence_seen: Optional[int]) -> None:
        self.operation = operation
        self.key = key
        self.fence = fence
        self.fence_seen = fence_seen
        self.result = FencedResult(STALE, fence_seen)
        super().__init__(
            f"{operation} of {key!r} rejected: fence {fence} is stale, "
            f"the storage has seen fence {fence_seen}"
        )


# --------------------------------------------------------------------------
# input checks (docs/faults.md, bad inputs: errors name the argument)
# --------------------------------------------------------------------------


def _key_bytes(key: Any, max_len: int, name: str = "key") -> bytes:
    """``key`` as bytes: ``str`` (UTF-8) or ``bytes``, non-empty, at most
    ``max_len`` bytes.  Same rules as the lock keys: an int is refused rather
    than coerced, so 1 and "1" cannot alias."""
    if isinstance(key, bytes):
        kb = bytes(key)
    elif isinstance(key, str):
        try:
            kb = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} {key!r} cannot be encoded as UTF-8: {exc}") from None
    else:
        raise TypeError(f"{name} must be str or bytes, got {type(key).__name__} {key!r}")
    if not kb:
        raise ValueError(f"{name} must not be empty")
    if len(kb) > max_len:
        raise ValueError(f"{name} is {len(kb)} bytes long; max_key_length is {max_len}")
    return kb


def _check_fence(fence: Any) -> int:
    if isinstance(fence, bool) or not isinstance(fence, int):
        raise TypeError(f"fence must be an int, got {type(fence).__name__} {fence!r}")
    if fence < 0:
        raise ValueError(f"fence must be >= 0, got {fence!r}")
    if fence > MAX_FENCE:
        raise ValueError(f"fence must be <= 2**63 - 1, got {fence!r}")
    return int(fence)


def _value_bytes(value: Any, name: str = "value") -> bytes:
    """bytes as they are, str as UTF-8, int as its decimal ASCII digits (so
    ``increment`` and ``compare_and_set(key, 5, 6, ...)`` see the same thing)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be bytes, str or int, got bool {value!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"{name} {value!r} cannot be encoded as UTF-8: {exc}") from None
    if isinstance(value, int):
        return str(int(value)).encode("ascii")
    raise TypeError(f"{name} must be bytes, str or int, got {type(value).__name__} {value!r}")


def _check_amount(amount: Any) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int, got {type(amount).__name__} {amount!r}")
    if not -(2**63) <= amount <= MAX_FENCE:
        raise ValueError(f"amount must fit in a signed 64-bit integer, got {amount!r}")
    return int(amount)


def _check_max_key_length(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"max_key_length must be an int, got {type(v).__name__} {v!r}")
    if v < 1:
        raise ValueError(f"max_key_length must be >= 1, got {v!r}")
    return v


# --------------------------------------------------------------------------
# Redis scripts
# --------------------------------------------------------------------------
#
# Layout: one hash per resource key, HSET key value <bytes> fence <decimal>.
# The fence is kept as a canonical decimal string and compared by this helper,
# not with tonumber(): Lua numbers are doubles, exact only below 2^53, and a
# fence may be anything up to 2^63 - 1 (the lock nodes issue fences from the
# node's TIME in microseconds, docs/fencing.md: about 1.8e15, ~2^51, today).
# Replies are arrays {code, highest_fence, value?}: a reply never contains a
# Lua false/nil (those end a Lua array and change meaning under RESP3), so an
# absent value is an absent third element.

_LT = b"""-- a < b for fences as decimal strings without sign or leading zeros.
local function fence_lt(a, b)
  if #a ~= #b then return #a < #b end
  if #a <= 15 then return tonumber(a) < tonumber(b) end
  -- equal lengths of 16..19 digits: compare the high and the low 9 digits,
  -- each exact as a double
  local ha, hb = tonumber(string.sub(a, 1, -10)), tonumber(string.sub(b, 1, -10))
  if ha ~= hb then return ha < hb end
  return tonumber(string.sub(a, -9)) < tonumber(string.sub(b, -9))
end
"""

# Fenced write: store the value if the fence is not below the highest seen.
# KEYS[1]: the resource hash; ARGV[1]: fence (decimal); ARGV[2]: the value.
# Returns {0, fence} when written (the highest fence is now ARGV[1]), or
# {1, highest} when ARGV[1] < highest (nothing changed).
WRITE = _LT + b"""local seen = redis.call('hget', KEYS[1], 'fence')
if seen and fence_lt(ARGV[1], seen) then
  return {1, seen}
end
redis.call('hset', KEYS[1], 'value', ARGV[2], 'fence', ARGV[1])
return {0, ARGV[1]}
"""

# Fenced read: return the value, and raise the highest fence to ours, so that
# every holder older than us is rejected from now on, even if it read first.
# KEYS[1]: the resource hash; ARGV[1]: fence (decimal).
# Returns {0, fence, value} ({0, fence} when there is no value), or
# {1, highest} when ARGV[1] < highest (nothing changed).
READ = _LT + b"""local seen = redis.call('hget', KEYS[1], 'fence')
if seen and fence_lt(ARGV[1], seen) then
  return {1, seen}
end
redis.call('hset', KEYS[1], 'fence', ARGV[1])
local v = redis.call('hget', KEYS[1], 'value')
if v then return {0, ARGV[1], v} end
return {0, ARGV[1]}
"""

# Fenced compare-and-set: the read-modify-write primitive.
# KEYS[1]: the resource hash; ARGV[1]: fence (decimal); ARGV[2]: '1' if a value
# is expected, '0' if the key is expected to have none; ARGV[3]: the expected
# value (ignored when ARGV[2] is '0'); ARGV[4]: the new value.
# Returns {0, fence} when set, {1, highest} when ARGV[1] < highest, or
# {2, highest, current} ({2, highest} when there is no value) when the value
# differs.  Only the first changes anything.
CAS = _LT + b"""local seen = redis.call('hget', KEYS[1], 'fence')
if seen and fence_lt(ARGV[1], seen) then
  return {1, seen}
end
local v = redis.call('hget', KEYS[1], 'value')
local match
if ARGV[2] == '1' then match = (v == ARGV[3]) else match = (not v) end
if not match then
  if v then return {2, seen or '0', v} end
  return {2, seen or '0'}
end
redis.call('hset', KEYS[1], 'value', ARGV[4], 'fence', ARGV[1])
return {0, ARGV[1]}
"""

# Fenced increment of an integer value (absent counts as 0), done on the node,
# so there is no read-then-write window at all.
# KEYS[1]: the resource hash; ARGV[1]: fence (decimal); ARGV[2]: the amount.
# Returns {0, fence, new_count}, or {1, highest} when ARGV[1] < highest.
# A value that is not a decimal integer raises (HINCRBY's error) unchanged.
INCREMENT = _LT + b"""local seen = redis.call('hget', KEYS[1], 'fence')
if seen and fence_lt(ARGV[1], seen) then
  return {1, seen}
end
local n = redis.call('hincrby', KEYS[1], 'value', ARGV[2])
redis.call('hset', KEYS[1], 'fence', ARGV[1])
return {0, ARGV[1], n}
"""

# Fenced delete: drop the value but keep the fence (a tombstone), so that a
# stale holder cannot write the key back after it was deleted.
# KEYS[1]: the resource hash; ARGV[1]: fence (decimal).
# Returns {0, fence}, or {1, highest} when ARGV[1] < highest.
DELETE = _LT + b"""local seen = redis.call('hget', KEYS[1], 'fence')
if seen and fence_lt(ARGV[1], seen) then
  return {1, seen}
end
redis.call('hdel', KEYS[1], 'value')
redis.call('hset', KEYS[1], 'fence', ARGV[1])
return {0, ARGV[1]}
"""


def _parse(reply: Any, op: str, key: Any, fence: int, raise_on_stale: bool) -> FencedResult:
    status = _CODES[int(reply[0])]
    seen = int(reply[1])
    if status == STALE:
        if raise_on_stale:
            raise StaleFence(op, key, fence, seen)
        return FencedResult(STALE, seen)
    value = reply[2] if len(reply) > 2 else None
    return FencedResult(status, seen, value)


class _RedisBase:
    __slots__ = ("client", "raise_on_stale", "max_key_length", "_write", "_read", "_cas",
                 "_incr", "_delete")

    def __init__(self, client: Any, *, raise_on_stale: bool = True, max_key_length: int = 1024) -> None:
        if not hasattr(client, "register_script"):
            raise TypeError(f"client must be a redis-py client, got {type(client).__name__} {client!r}")
        self.client = client
        self.raise_on_stale = bool(raise_on_stale)
        self.max_key_length = _check_max_key_length(max_key_length)
        # register_script: EVALSHA, and on NOSCRIPT a SCRIPT LOAD and one more
        # EVALSHA (docs/faults.md row 19).
        self._write = client.register_script(WRITE)
        self._read = client.register_script(READ)
        self._cas = client.register_script(CAS)
        self._incr = client.register_script(INCREMENT)
        self._delete = client.register_script(DELETE)

    def _key(self, key: Any) -> bytes:
        return _key_bytes(key, self.max_key_length)

    @staticmethod
    def _cas_args(fence: int, expected: Any, new: Any) -> Tuple[bytes, ...]:
        nb = _value_bytes(new, "new")
        if expected is None:
            return (b"%d" % fence, b"0", b"", nb)
        return (b"%d" % fence, b"1", _value_bytes(expected, "expected"), nb)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client!r})"


class FencedStore(_RedisBase):
    """Fenced values on a Redis storage node, through a blocking ``redis.Redis``.

    Use a node that is *not* one of the lock nodes: the lock nodes may be run
    without persistence (docs/node-modes.md), and the data should outlive them.

    Each resource ``key`` is one hash: field ``value`` (the bytes) and field
    ``fence`` (the highest fence seen, decimal).  Do not ``DEL`` the hash to
    remove a value: that forgets the fence and lets a stale holder write again;
    use :meth:`delete`.

    Parameters
    ----------
    client:
        A ``redis.Redis``.  It is used as given; note that redis-py retries a
        command after a connection error by default (docs/faults.md, how the faults are made), and a
        retried :meth:`increment` whose first reply was lost counts twice.
    raise_on_stale:
        ``True`` (default): a stale fence raises :class:`StaleFence`.
        ``False``: it returns a :class:`FencedResult` with ``status="stale"``.
    max_key_length:
        Longest key accepted, in bytes (default 1024, like the lock keys).

    Keys are ``str`` (UTF-8) or ``bytes``.  Values are ``bytes``, ``str``
    (stored UTF-8) or ``int`` (stored as decimal digits); they come back as
    the client returns strings.  Fences are ints from 0 to 2**63 - 1.
    """

    __slots__ = ()

    def write(self, key: Any, value: Value, fence: int) -> FencedResult:
        """Store ``value`` if ``fence`` is not below the highest fence seen for
        ``key``; the highest becomes ``fence``.  Write-only fencing: see
        :meth:`read` and :meth:`compare_and_set` for read-modify-write."""
        kb, fence, vb = self._key(key), _check_fence(fence), _value_bytes(value)
        return _parse(self._write(keys=(kb,), args=(b"%d" % fence, vb)), "write", key, fence, self.raise_on_stale)

    def read(self, key: Any, fence: int) -> FencedResult:
        """Fenced read: the value of ``key`` (``result.value``, ``None`` when it
        has none), rejected if ``fence`` is below the highest seen; otherwise the
        highest becomes ``fence``, so every older holder's later write is
        rejected, even one that read before this read."""
        kb, fence = self._key(key), _check_fence(fence)
        return _parse(self._read(keys=(kb,), args=(b"%d" % fence,)), "read", key, fence, self.raise_on_stale)

    def compare_and_set(self, key: Any, expected: Optional[Value], new: Value, fence: int) -> FencedResult:
        """Set ``key`` to ``new`` only if ``fence`` is not below the highest
        seen AND the value is ``expected`` (``None``: the key has no value).
        ``status`` is ``"ok"``, ``"stale"``, or ``"conflict"`` with the current
        value in ``result.value``; only ``"ok"`` changes anything."""
        kb, fence = self._key(key), _check_fence(fence)
        args = self._cas_args(fence, expected, new)
        return _parse(self._cas(keys=(kb,), args=args), "compare_and_set", key, fence, self.raise_on_stale)

    def increment(self, key: Any, fence: int, amount: int = 1) -> FencedResult:
        """Add ``amount`` to the integer value of ``key`` (absent: 0), on the
        node in one script; ``result.value`` is the new count.  Not idempotent:
        do not retry it blindly after a lost reply."""
        kb, fence, amount = self._key(key), _check_fence(fence), _check_amount(amount)
        reply = self._incr(keys=(kb,), args=(b"%d" % fence, b"%d" % amount))
        return _parse(reply, "increment", key, fence, self.raise_on_stale)

    def delete(self, key: Any, fence: int) -> FencedResult:
        """Remove the value of ``key`` but keep its fence (a tombstone)."""
        kb, fence = self._key(key), _check_fence(fence)
        return _parse(self._delete(keys=(kb,), args=(b"%d" % fence,)), "delete", key, fence, self.raise_on_stale)

    def get(self, key: Any) -> Any:
        """The value of ``key`` without any fence check (for inspection and
        checkers, not for a holder's read-modify-write); ``None`` if none."""
        return self.client.hget(self._key(key), VALUE_FIELD)

    def highest_fence(self, key: Any) -> Optional[int]:
        """The highest fence seen for ``key``; ``None`` if none ever was."""
        v = self.client.hget(self._key(key), FENCE_FIELD)
        return None if v is None else int(v)


class AsyncFencedStore(_RedisBase):
    """Fenced values on a Redis storage node, through a ``redis.asyncio.Redis``.

    The same layout, contract and methods as :class:`FencedStore`, as
    coroutines."""

    __slots__ = ()

    async def write(self, key: Any, value: Value, fence: int) -> FencedResult:
        """Store ``value`` if ``fence`` is not below the highest fence seen for
        ``key``; the highest becomes ``fence``.  Write-only fencing: see
        :meth:`read` and :meth:`compare_and_set` for read-modify-write."""
        kb, fence, vb = self._key(key), _check_fence(fence), _value_bytes(value)
        reply = await self._write(keys=(kb,), args=(b"%d" % fence, vb))
        return _parse(reply, "write", key, fence, self.raise_on_stale)

    async def read(self, key: Any, fence: int) -> FencedResult:
        """Fenced read: the value of ``key`` (``result.value``, ``None`` when it
        has none), rejected if ``fence`` is below the highest seen; otherwise the
        highest becomes ``fence``, so every older holder's later write is
        rejected, even one that read before this read."""
        kb, fence = self._key(key), _check_fence(fence)
        reply = await self._read(keys=(kb,), args=(b"%d" % fence,))
        return _parse(reply, "read", key, fence, self.raise_on_stale)

    async def compare_and_set(self, key: Any, expected: Optional[Value], new: Value, fence: int) -> FencedResult:
        """Set ``key`` to ``new`` only if ``fence`` is not below the highest
        seen AND the value is ``expected`` (``None``: the key has no value).
        ``status`` is ``"ok"``, ``"stale"``, or ``"conflict"`` with the current
        value in ``result.value``; only ``"ok"`` changes anything."""
        kb, fence = self._key(key), _check_fence(fence)
        reply = await self._cas(keys=(kb,), args=self._cas_args(fence, expected, new))
        return _parse(reply, "compare_and_set", key, fence, self.raise_on_stale)

    async def increment(self, key: Any, fence: int, amount: int = 1) -> FencedResult:
        """Add ``amount`` to the integer value of ``key`` (absent: 0), on the
        node in one script; ``result.value`` is the new count.  Not idempotent:
        do not retry it blindly after a lost reply."""
        kb, fence, amount = self._key(key), _check_fence(fence), _check_amount(amount)
        reply = await self._incr(keys=(kb,), args=(b"%d" % fence, b"%d" % amount))
        return _parse(reply, "increment", key, fence, self.raise_on_stale)

    async def delete(self, key: Any, fence: int) -> FencedResult:
        """Remove the value of ``key`` but keep its fence (a tombstone)."""
        kb, fence = self._key(key), _check_fence(fence)
        reply = await self._delete(keys=(kb,), args=(b"%d" % fence,))
        return _parse(reply, "delete", key, fence, self.raise_on_stale)

    async def get(self, key: Any) -> Any:
        """The value of ``key`` without any fence check (for inspection and
        checkers, not for a holder's read-modify-write); ``None`` if none."""
        return await self.client.hget(self._key(key), VALUE_FIELD)

    async def highest_fence(self, key: Any) -> Optional[int]:
        """The highest fence seen for ``key``; ``None`` if none ever was."""
        v = await self.client.hget(self._key(key), FENCE_FIELD)
        return None if v is None else int(v)


# --------------------------------------------------------------------------
# SQL
# --------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")

# The decision is always one statement: an UPDATE or an INSERT ... ON CONFLICT
# DO UPDATE whose WHERE holds the fence test, so there is no window between a
# check and a write.  In PostgreSQL, ON CONFLICT DO UPDATE locks the row and
# evaluates its WHERE on the latest committed version (READ COMMITTED); in
# SQLite the statement holds the database write lock.  The SELECT that follows
# a rejection only describes it (fence_seen, the current value).
_SQL = {
    "sqlite": {
        "ph": "?",
        "ddl": (
            "CREATE TABLE IF NOT EXISTS {t} (\n"
            "  key BLOB PRIMARY KEY,\n"
            "  value BLOB,\n"
            "  fence INTEGER NOT NULL CHECK (fence >= 0)\n"
            ")"
        ),
    },
    "postgres": {
        "ph": "%s",
        "ddl": (
            "CREATE TABLE IF NOT EXISTS {t} (\n"
            "  key BYTEA PRIMARY KEY,\n"
            "  value BYTEA,\n"
            "  fence BIGINT NOT NULL CHECK (fence >= 0)\n"
            ")"
        ),
    },
}


def _statements(table: str, dialect: str) -> dict:
    p = _SQL[dialect]["ph"]
    t = table
    upsert = f"INSERT INTO {t} AS cur (key, value, fence) VALUES ({p}, {p}, {p}) ON CONFLICT (key) DO UPDATE SET "
    return {
        "ddl": _SQL[dialect]["ddl"].format(t=t),
        # params: key, value, fence
        "write": upsert + "value = excluded.value, fence = excluded.fence "
                          "WHERE cur.fence <= excluded.fence RETURNING fence",
        # params: key, NULL, fence (a first read leaves a row with no value)
        "read": upsert + "fence = excluded.fence WHERE cur.fence <= excluded.fence RETURNING value",
        # params: key, NULL, fence
        "delete": upsert + "value = NULL, fence = excluded.fence WHERE cur.fence <= excluded.fence RETURNING fence",
        # params: key, new, fence (expected: no value)
        "cas_absent": upsert + "value = excluded.value, fence = excluded.fence "
                               "WHERE cur.fence <= excluded.fence AND cur.value IS NULL RETURNING fence",
        # params: new, fence, key, fence, expected
        "cas": f"UPDATE {t} SET value = {p}, fence = {p} "
               f"WHERE key = {p} AND fence <= {p} AND value = {p} RETURNING fence",
        "select": f"SELECT value, fence FROM {t} WHERE key = {p}",
    }  # fmt: skip


def _guess_dialect(conn: Any) -> Optional[str]:
    mod = type(conn).__module__.split(".")[0]
    if mod in ("sqlite3", "_sqlite3"):
        return "sqlite"
    if mod in ("psycopg", "psycopg2"):
        return "postgres"
    return None


def _blob(v: Any) -> Optional[bytes]:
    # psycopg2 returns bytea as memoryview, psycopg 3 and sqlite3 as bytes
    return None if v is None else bytes(v)


class SQLFencedTable:
    """Fenced values in one SQL table, over a DB-API connection (sqlite3,
    psycopg 3 or psycopg2; quorumlock depends on none of them).

    The table: ``key`` (BLOB / BYTEA, primary key), ``value`` (BLOB / BYTEA,
    NULL when there is none), ``fence`` (INTEGER / BIGINT, the highest fence
    seen).  Keys and values are encoded as in :class:`FencedStore` (str as
    UTF-8, int as decimal digits) and values come back as ``bytes``.

    Each fenced operation is one conditional statement (an ``UPDATE ... WHERE
    fence <= ?`` or an ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE``), so
    the fence check and the change cannot be separated by another writer.

    Parameters
    ----------
    conn:
        A DB-API 2 connection.
    table:
        Table name (``name`` or ``schema.name``, letters, digits, ``_``).
    dialect:
        ``"sqlite"`` or ``"postgres"``; guessed from the connection's module
        when not given.
    commit:
        ``True`` (default): every method commits its statement.  ``False``:
        the caller owns the transaction; e.g. a fenced :meth:`read` as the
        first statement guards everything else the transaction does
        (docs/fencing-storage.md, "your own tables").
    raise_on_stale:
        As for :class:`FencedStore`.
    """

    __slots__ = ("conn", "table", "dialect", "commit", "raise_on_stale", "max_key_length", "_sql")

    def __init__(
        self,
        conn: Any,
        table: str = "quorumlock_fenced",
        dialect: Optional[str] = None,
        *,
        commit: bool = True,
        raise_on_stale: bool = True,
        max_key_length: int = 1024,
    ) -> None:
        if not hasattr(conn, "cursor"):
            raise TypeError(f"conn must be a DB-API connection, got {type(conn).__name__} {conn!r}")
        if not isinstance(table, str):
            raise TypeError(f"table must be a str, got {type(table).__name__} {table!r}")
        if not _IDENT.match(table):
            raise ValueError(f"table must be an identifier (name or schema.name), got {table!r}")
        if dialect is None:
            dialect = _guess_dialect(conn)
            if dialect is None:
                raise ValueError(
                    f"dialect is needed for a {type(conn).__module__}.{type(conn).__name__} "
                    "connection: 'sqlite' or 'postgres'"
                )
        if dialect not in _SQL:
            raise ValueError(f"dialect must be 'sqlite' or 'postgres', got {dialect!r}")
        if dialect == "sqlite":
            import sqlite3

            if sqlite3.sqlite_version_info < (3, 35, 0):  # RETURNING
                raise RuntimeError(f"SQLFencedTable needs SQLite >= 3.35, this is {sqlite3.sqlite_version}")
        self.conn = conn
        self.table = table
        self.dialect = dialect
        self.commit = bool(commit)
        self.raise_on_stale = bool(raise_on_stale)
        self.max_key_length = _check_max_key_length(max_key_length)
        self._sql = _statements(table, dialect)

    def __repr__(self) -> str:
        return f"SQLFencedTable({self.conn!r}, table={self.table!r}, dialect={self.dialect!r})"

    # -- plumbing -----------------------------------------------------------

    def _run(self, stmt: str, params: Tuple[Any, ...]) -> list:
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql[stmt], params)
            rows = cur.fetchall() if cur.description is not None else []
        finally:
            cur.close()
        if self.commit:
            self.conn.commit()
        return rows

    def _row(self, kb: bytes) -> Tuple[Optional[bytes], Optional[int]]:
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql["select"], (kb,))
            row = cur.fetchone()
        finally:
            cur.close()
        if self.commit:
            self.conn.commit()  # end the read's transaction too
        if row is None:
            return None, None
        return _blob(row[0]), int(row[1])

    def _rejected(self, op: str, key: Any, kb: bytes, fence: int) -> FencedResult:
        value, seen = self._row(kb)
        if seen is not None and seen > fence:
            if self.raise_on_stale:
                raise StaleFence(op, key, fence, seen)
            return FencedResult(STALE, seen)
        return FencedResult(CONFLICT, seen if seen is not None else 0, value)

    # -- API ----------------------------------------------------------------

    def create(self) -> None:
        """``CREATE TABLE IF NOT EXISTS`` the table."""
        self._run("ddl", ())

    def write(self, key: Any, value: Value, fence: int) -> FencedResult:
        """Store ``value`` if ``fence`` is not below the highest fence seen for
        ``key``; the highest becomes ``fence``.  Write-only fencing: see
        :meth:`read` and :meth:`compare_and_set` for read-modify-write."""
        kb, fence, vb = self._key(key), _check_fence(fence), _value_bytes(value)
        if self._run("write", (kb, vb, fence)):
            return FencedResult(OK, fence)
        return self._rejected("write", key, kb, fence)

    def read(self, key: Any, fence: int) -> FencedResult:
        """Fenced read: the value of ``key`` (``result.value``, ``None`` when it
        has none), rejected if ``fence`` is below the highest seen; otherwise the
        highest becomes ``fence``, so every older holder's later write is
        rejected, even one that read before this read."""
        kb, fence = self._key(key), _check_fence(fence)
        rows = self._run("read", (kb, None, fence))
        if rows:
            return FencedResult(OK, fence, _blob(rows[0][0]))
        return self._rejected("read", key, kb, fence)

    def compare_and_set(self, key: Any, expected: Optional[Value], new: Value, fence: int) -> FencedResult:
        """Set ``key`` to ``new`` only if ``fence`` is not below the highest
        seen AND the value is ``expected`` (``None``: the key has no value).
        ``status`` is ``"ok"``, ``"stale"``, or ``"conflict"`` with the current
        value in ``result.value``; only ``"ok"`` changes anything."""
        kb, fence = self._key(key), _check_fence(fence)
        nb = _value_bytes(new, "new")
        if expected is None:
            rows = self._run("cas_absent", (kb, nb, fence))
        else:
            rows = self._run("cas", (nb, fence, kb, fence, _value_bytes(expected, "expected")))
        if rows:
            return FencedResult(OK, fence)
        return self._rejected("compare_and_set", key, kb, fence)

    def delete(self, key: Any, fence: int) -> FencedResult:
        """Remove the value of ``key`` but keep its fence (a tombstone)."""
        kb, fence = self._key(key), _check_fence(fence)
        if self._run("delete", (kb, None, fence)):
            return FencedResult(OK, fence)
        return self._rejected("delete", key, kb, fence)

    def get(self, key: Any) -> Optional[bytes]:
        """The value of ``key`` without any fence check; ``None`` if none."""
        return self._row(self._key(key))[0]

    def highest_fence(self, key: Any) -> Optional[int]:
        """The highest fence seen for ``key``; ``None`` if none ever was."""
        return self._row(self._key(key))[1]

    def _key(self, key: Any) -> bytes:
        return _key_bytes(key, self.max_key_length)
