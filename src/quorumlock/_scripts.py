"""The Lua scripts the engine runs on every node, shared by both cores.

Each script goes out as ``EVALSHA`` and falls back to ``EVAL`` on ``NOSCRIPT``
(a restarted or ``SCRIPT FLUSH``-ed node has forgotten it; docs/algorithm.md)."""

from __future__ import annotations

import hashlib

# Compare-and-delete: release only what we hold.
# KEYS[1]: lock key; ARGV[1]: our token.  Returns 1 if deleted, 0 if the key is
# absent or holds another token (never deletes someone else's lock).
RELEASE = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0"""

# Compare-and-pexpire: extend only what we hold, never resurrect.
# KEYS[1]: lock key; ARGV[1]: our token; ARGV[2]: new TTL in ms.
# Returns 1 if the TTL was set, 0 if the key is absent or not ours.
EXTEND = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0"""

# Batch acquire: one call per node carries a whole batch (cheaper per key for
# the node than one SET per key, and one reply for the client to parse).
# KEYS: the lock keys; ARGV[1]: TTL in ms; ARGV[1+i]: the token for KEYS[i].
# Returns an array with 1 where KEYS[i] was set, 0 where it is held.
ACQUIRE_MANY = b"""local out = {}
for i = 1, #KEYS do
  if redis.call('set', KEYS[i], ARGV[i + 1], 'NX', 'PX', ARGV[1]) then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out"""

# Batch compare-and-delete.
# KEYS: the lock keys; ARGV[i]: the token for KEYS[i].
# Returns an array with 1 where KEYS[i] was ours and is now deleted, else 0.
RELEASE_MANY = b"""local out = {}
for i = 1, #KEYS do
  if redis.call('get', KEYS[i]) == ARGV[i] then
    out[i] = redis.call('del', KEYS[i])
  else
    out[i] = 0
  end
end
return out"""


#: Per-key fence counter and lock-delay marker live next to the lock key, in
#: a namespace no user key can reach: every internal key starts with the byte
#: 0xFF, which never occurs in UTF-8 (so no ``str`` key maps there), and the
#: engine refuses ``bytes`` keys that start with ``RESERVED_PREFIX``.  (The
#: first round used "ql:fence:" / "ql:delay:", so a user key "ql:fence:job"
#: collided with the fence counter of "job" and could never be locked.)
RESERVED_PREFIX = b"\xffql:"
FENCE_PREFIX = RESERVED_PREFIX + b"fence:"
DELAY_PREFIX = RESERVED_PREFIX + b"delay:"

# Acquire with a fence and/or a lock-delay (docs/fencing.md; Chubby's lock-delay).
# KEYS[1]: lock key; KEYS[2]: fence counter; KEYS[3]: lock-delay marker.
# ARGV[1]: token; ARGV[2]: TTL ms; ARGV[3]: lock-delay ms (0: none);
# ARGV[4]: "1" to issue a fence.
# Returns 0 if the key is held (or still in its lock-delay); otherwise the
# node's new fence counter, max(counter + 1, node TIME in us), when fencing,
# else 1.  Using the node's clock as a floor means a node that lost its counter
# in a restart still issues values above everything it issued before.
# A fence above 2^53 - 1 is refused with an error, before the SET (nothing is
# written): Lua numbers are doubles, so past 2^53 "counter + 1" rounds back to
# the counter and two holders would get the same fence, which a fenced store
# accepts from both (docs/fencing.md, "Other assumptions").
ACQUIRE_EX = b"""if tonumber(ARGV[3]) > 0 then
  local m = redis.call('get', KEYS[3])
  if m and m ~= ARGV[1] then return 0 end
end
local f = 1
if ARGV[4] == '1' then
  local t = redis.call('time')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  f = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if now_us > f then f = now_us end
  if f > 9007199254740991 then
    if redis.call('exists', KEYS[1]) == 1 then return 0 end
    return redis.error_reply('fence counter at its limit: the next fence would pass 2^53 - 1, the largest integer a Lua number holds exactly')
  end
end
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('set', KEYS[3], ARGV[1], 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
end
if ARGV[4] == '1' then
  redis.call('set', KEYS[2], string.format('%d', f))
end
return f"""

# Commit a fence: raise the counter to it, only where our token still holds
# the key, and only as far as this node's own clock covers.  The fence is
# valid once a majority accepted (docs/fencing.md, "Clock offsets").
# KEYS[1]: lock key; KEYS[2]: fence counter; ARGV[1]: token; ARGV[2]: fence F;
# ARGV[3]: D, the slack in us: the shortest time (on this node's clock) a
# volatile node stays down after losing its counter (the client sends its TTL).
# Returns 0 if the key is not ours; otherwise this node's TIME in us, positive
# if the counter is now >= F, negative (-TIME) if F > TIME + D: raising the
# counter that far would let a restart of this node issue fences below F, so
# it is refused and the counter is left as it was.  A counter already >= F is
# not raised and needs no check.
FENCE_COMMIT = b"""if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local t = redis.call('time')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = tonumber(ARGV[2])
if tonumber(redis.call('get', KEYS[2]) or '0') < f then
  if f > now_us + tonumber(ARGV[3]) then return -now_us end
  redis.call('set', KEYS[2], ARGV[2])
end
return now_us"""

# Release with lock-delay: a clean release also lifts the delay.
# KEYS[1]: lock key; KEYS[2]: lock-delay marker; ARGV[1]: token.
# Returns 1 if our token was deleted, else 0 (the delay then stays).
RELEASE_EX = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
  return 1
end
return 0"""

# Extend with lock-delay: the marker outlives the lease by the delay.
# KEYS[1]: lock key; KEYS[2]: lock-delay marker; ARGV[1]: token; ARGV[2]: TTL ms;
# ARGV[3]: lock-delay ms.  Returns 1 if extended, 0 if the key is not ours.
EXTEND_EX = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  redis.call('set', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
  return 1
end
return 0"""


#: Channel prefix of release notifications: the notify forms of the release
#: scripts PUBLISH on ``RELEASE_CHANNEL_PREFIX + key`` (one channel per key, so
#: a node only sends a message to the waiters of that key).  Opt-in
#: (``notify=True`` on a manager): the default release stays one script call
#: without a PUBLISH.  Waiters: ``quorumlock.leases.notify``.
RELEASE_CHANNEL_PREFIX = b"ql:released:"

# Compare-and-delete that also tells the waiters (opt-in notify form of RELEASE).
# KEYS[1]: lock key; ARGV[1]: our token.
# Returns 1 if deleted (and publishes "1" on 'ql:released:' .. KEYS[1]), else 0.
RELEASE_NOTIFY = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', 'ql:released:' .. KEYS[1], '1')
  return 1
end
return 0"""

# Release with lock-delay that also tells the waiters (notify form of RELEASE_EX).
# KEYS[1]: lock key; KEYS[2]: lock-delay marker; ARGV[1]: token.
# Returns 1 if our token was deleted (the delay is lifted, the key published), else 0.
RELEASE_EX_NOTIFY = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
  redis.call('publish', 'ql:released:' .. KEYS[1], '1')
  return 1
end
return 0"""


def sha1(script: bytes) -> bytes:
    """The hex SHA1 digest ``EVALSHA`` names ``script`` by, as bytes."""
    return hashlib.sha1(script).hexdigest().encode()


def _bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


class Script:
    """One Lua script: its name, body, and the shape of a call.

    ``keys`` and ``args`` name the KEYS and ARGV the script reads, in order;
    ``None`` means a variable count (the batch scripts, whose caller writes
    the RESP array header itself).  The engine writes every ``EVALSHA`` it
    sends from :attr:`evalsha_header`, and the ``EVAL`` fallback from
    :attr:`body` and :attr:`numkeys`, so the arity is stated here only."""

    __slots__ = ("name", "body", "sha", "keys", "args", "numkeys", "evalsha_header")

    def __init__(self, name: str, body: bytes, keys: "tuple[str, ...] | None",
                 args: "tuple[str, ...] | None") -> None:
        if (keys is None) != (args is None):
            raise ValueError(f"script {name}: keys and args are both fixed or both variable")
        self.name = name
        self.body = body
        self.sha = sha1(body)
        self.keys = keys
        self.args = args
        #: ``numkeys`` as the bulk string a call sends (``None`` when variable).
        self.numkeys: "bytes | None" = None if keys is None else str(len(keys)).encode()
        head = _bulk(b"EVALSHA") + _bulk(self.sha)
        if keys is None:
            # Variable: "$7 EVALSHA $40 <sha>"; the caller writes "*<n>" before
            # it and numkeys, the keys and the args after it.
            self.evalsha_header = head
        else:
            assert args is not None and self.numkeys is not None
            n = 3 + len(keys) + len(args)
            self.evalsha_header = b"*%d\r\n" % n + head + _bulk(self.numkeys)

    def __repr__(self) -> str:
        return f"<Script {self.name} keys={self.keys} args={self.args}>"


S_RELEASE = Script("release", RELEASE, ("key",), ("token",))
S_EXTEND = Script("extend", EXTEND, ("key",), ("token", "ttl_ms"))
S_ACQUIRE_MANY = Script("acquire_many", ACQUIRE_MANY, None, None)
S_RELEASE_MANY = Script("release_many", RELEASE_MANY, None, None)
S_ACQUIRE_EX = Script("acquire_ex", ACQUIRE_EX, ("key", "fence_key", "delay_key"),
                      ("token", "ttl_ms", "delay_ms", "fenced"))
S_FENCE_COMMIT = Script("fence_commit", FENCE_COMMIT, ("key", "fence_key"), ("token", "fence", "slack_us"))
S_RELEASE_EX = Script("release_ex", RELEASE_EX, ("key", "delay_key"), ("token",))
S_EXTEND_EX = Script("extend_ex", EXTEND_EX, ("key", "delay_key"), ("token", "ttl_ms", "delay_ms"))
S_RELEASE_NOTIFY = Script("release_notify", RELEASE_NOTIFY, ("key",), ("token",))
S_RELEASE_EX_NOTIFY = Script("release_ex_notify", RELEASE_EX_NOTIFY, ("key", "delay_key"), ("token",))

#: Every script the engine loads on a node (``SCRIPT LOAD`` at connect).
SCRIPTS = (S_RELEASE, S_EXTEND, S_ACQUIRE_MANY, S_RELEASE_MANY, S_ACQUIRE_EX, S_FENCE_COMMIT,
           S_RELEASE_EX, S_EXTEND_EX, S_RELEASE_NOTIFY, S_RELEASE_EX_NOTIFY)

RELEASE_SHA = S_RELEASE.sha
EXTEND_SHA = S_EXTEND.sha
ACQUIRE_MANY_SHA = S_ACQUIRE_MANY.sha
RELEASE_MANY_SHA = S_RELEASE_MANY.sha

ACQUIRE_EX_SHA = S_ACQUIRE_EX.sha
FENCE_COMMIT_SHA = S_FENCE_COMMIT.sha
RELEASE_EX_SHA = S_RELEASE_EX.sha
EXTEND_EX_SHA = S_EXTEND_EX.sha
RELEASE_NOTIFY_SHA = S_RELEASE_NOTIFY.sha
RELEASE_EX_NOTIFY_SHA = S_RELEASE_EX_NOTIFY.sha

#: (body, sha) pairs of :data:`SCRIPTS` (the older form, kept for its callers).
ALL = tuple((s.body, s.sha) for s in SCRIPTS)
