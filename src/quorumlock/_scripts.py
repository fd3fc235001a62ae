"""The Lua scripts the engine runs on every node, shared by both cores.

Each script goes out as ``EVALSHA`` and falls back to ``EVAL`` on ``NOSCRIPT``
(a restarted or ``SCRIPT FLUSH``-ed node has forgotten it; DESIGN.md §2.6)."""

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


def sha1(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


RELEASE_SHA = sha1(RELEASE)
EXTEND_SHA = sha1(EXTEND)
ACQUIRE_MANY_SHA = sha1(ACQUIRE_MANY)
RELEASE_MANY_SHA = sha1(RELEASE_MANY)

ALL = ((RELEASE, RELEASE_SHA), (EXTEND, EXTEND_SHA), (ACQUIRE_MANY, ACQUIRE_MANY_SHA), (RELEASE_MANY, RELEASE_MANY_SHA))
