"""The Lua scripts that make each change to a namespace atomic on the server.

Every script touches only keys of one namespace, which share a hash tag and so one cluster slot; every
key it touches is passed in ``KEYS``. Scripts run whole or not at all, so a reader never sees an artifact
without its index entry or the other way round.

No large payload ever passes through Lua: Redis copies a script's arguments into Lua strings and again into
the value it writes, which made a 64 MB save five times slower than a plain ``SET``. Payloads below the
inline limit travel as an argument of :data:`SAVE` (one command is cheaper there than two); larger ones are
first uploaded with a plain ``SET ... PX`` to a temporary key of the namespace, and :data:`COMMIT` moves that
key into place with ``RENAME`` (constant time, no copy).

Memory: :data:`SAVE`'s first write is ``HSET``, a command that may grow memory, so a server at
``maxmemory`` refuses the save before it changes anything (Redis checks memory at a script's first write).
For an uploaded payload the check is the upload's ``SET`` itself; :data:`COMMIT`'s first write is
``RENAME`` or ``UNLINK``, which are never refused, so a commit whose upload was accepted completes. Delete
and clear work at ``maxmemory``: their first write is ``UNLINK``, and the small result marker they write
after it (see :data:`DELETE`) is then allowed, because Redis refuses a script's memory-growing command only
while the script has written nothing (once it has, it must not stop halfway). The marker is written with
``redis.pcall`` all the same, so that a refused marker could never fail a removal that has happened.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "CLEAR",
    "COMMIT",
    "DELETE",
    "FORGET_NAMESPACE",
    "READ",
    "REGISTER_NAMESPACE",
    "SAVE",
    "SAVE_EXISTS",
    "SAVE_KEPT",
    "SAVE_UPLOAD_MISSING",
    "SAVE_WRITTEN",
    "LuaScript",
]


@dataclass(frozen=True)
class LuaScript:
    """A script's source and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # SHA1 is what Redis names scripts by; it is an identifier here, not a security measure.
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest())


#: A save's result: an equal artifact was already stored and is kept (a safe retry).
SAVE_KEPT = 0
#: A save's result: a different artifact is stored and overwrite was not asked for.
SAVE_EXISTS = 1
#: A save's result: the artifact was written.
SAVE_WRITTEN = 2
#: COMMIT's result: the uploaded payload is not there (its upload failed, or it expired); nothing changed.
SAVE_UPLOAD_MISSING = 3

# The end of SAVE and COMMIT, composed into both (so each is one self-contained script): once the artifact
# is written, stored(hash, index, member, ttl, current, payload) sets its expiry and index entry, prunes the
# index, and returns the result "written"; kept(hash, index, member) restores a missing index entry of an
# identical artifact found stored, and returns the result "kept". ``ttl`` is in milliseconds (0: none);
# ``current`` is the identity the hash held before (false for a new artifact); ``payload`` is the payload
# key when the payload lives there (COMMIT), false when it is in the hash (SAVE).
#
# Expiry and index scores use the server's clock, never a client's, so that every client agrees on what
# has expired. Index entries of expired artifacts are pruned a few at a time, so no call does unbounded
# work. The index is ordered by expiry, so its first entry tells whether anything can be stale; a namespace
# without TTLs pays one ZRANGE and never reads the clock.
_STORED = """
local function server_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

local function stored(hash, index, member, ttl, current, payload)
  local now = false
  if ttl > 0 then
    now = server_ms()
    -- The same instant for hash and payload key: they expire together.
    redis.call('PEXPIREAT', hash, now + ttl)
    if payload then redis.call('PEXPIREAT', payload, now + ttl) end
    redis.call('ZADD', index, now + ttl, member)
  else
    -- RENAME carried the upload's safety expiry over to the payload key.
    if payload then redis.call('PERSIST', payload) end
    -- A new hash has no expiry; an overwritten one keeps its old expiry unless removed.
    if current then redis.call('PERSIST', hash) end
    redis.call('ZADD', index, 'inf', member)
  end
  local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  if first[2] and first[2] ~= 'inf' then
    now = now or server_ms()
    if tonumber(first[2]) < now then
      local stale = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. now, 'LIMIT', 0, 32)
      if #stale > 0 then redis.call('ZREM', index, unpack(stale)) end
    end
  end
  return 2
end

-- A write-once save that finds its identical artifact kept (result 0) puts the artifact's index entry back
-- if it is missing: a server with an evicting maxmemory-policy evicts the index (or the whole index key)
-- independently of the hash, and list() and clear() work from the index. Saving the message again is the
-- way a caller can repair that, with no extra round trip: one ZSCORE on the common path, where the entry
-- is there. The score is the hash's own expiry (PTTL), as stored() gave it.
local function kept(hash, index, member)
  if not redis.call('ZSCORE', index, member) then
    local left = redis.call('PTTL', hash)
    if left >= 0 then
      redis.call('ZADD', index, server_ms() + left, member)
    else
      redis.call('ZADD', index, 'inf', member)
    end
  end
  return 0
end
"""

#: KEYS: artifact hash, namespace index, payload key. ARGV: index member (encoded step id), identity key,
#: head, payload, overwrite ("1" or "0"), time to live in milliseconds ("0": none). Stores the payload in
#: the hash (an inline artifact).
SAVE = LuaScript(
    "save",
    _STORED
    + """
local current = redis.call('HGET', KEYS[1], 'id')
if current and ARGV[5] ~= '1' then
  if current == ARGV[2] then return kept(KEYS[1], KEYS[2], ARGV[1]) end
  return 1
end
redis.call('HSET', KEYS[1], 'head', ARGV[3], 'payload', ARGV[4], 'id', ARGV[2])
-- An overwritten artifact may have kept its payload in the payload key.
if current then redis.call('UNLINK', KEYS[3]) end
return stored(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[6]), current, false)
""",
)

#: KEYS: artifact hash, namespace index, payload key, upload key (where the payload was uploaded with
#: ``SET ... PX``). ARGV: index member, identity key, head, overwrite ("1" or "0"), time to live in
#: milliseconds ("0": none). Moves the upload into the payload key and writes head and identity into the
#: hash; whenever it does not, it deletes the upload, except when the upload is missing (result 3).
COMMIT = LuaScript(
    "commit",
    _STORED
    + """
local current = redis.call('HGET', KEYS[1], 'id')
if current then
  if ARGV[4] ~= '1' then
    redis.call('UNLINK', KEYS[4])
    if current == ARGV[2] then return kept(KEYS[1], KEYS[2], ARGV[1]) end
    return 1
  end
  -- An overwrite finding its own head (created_at included) is a retry of a commit that already ran, or
  -- an overwrite with the very same message: nothing to move, but the expiry asked for is applied (an
  -- overwrite without a TTL makes the artifact permanent again, one with a TTL restarts it).
  if current == ARGV[2] and redis.call('HGET', KEYS[1], 'head') == ARGV[3] then
    redis.call('UNLINK', KEYS[4])
    return stored(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[5]), current, KEYS[3])
  end
end
if redis.call('EXISTS', KEYS[4]) == 0 then return 3 end
-- O(1): the value is moved, not copied; an old payload is freed in the background first.
if current then redis.call('UNLINK', KEYS[3]) end
redis.call('RENAME', KEYS[4], KEYS[3])
if current then redis.call('HDEL', KEYS[1], 'payload') end
redis.call('HSET', KEYS[1], 'head', ARGV[3], 'id', ARGV[2])
return stored(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[5]), current, KEYS[3])
""",
)

#: KEYS: artifact hash, payload key. Returns head and payload read at one instant (the payload from the
#: hash, or from the payload key when the hash has none). Only for the rare read that raced a change: it
#: copies the payload through Lua.
READ = LuaScript(
    "read",
    """
local found = redis.call('HMGET', KEYS[1], 'head', 'payload')
if found[1] and not found[2] then found[2] = redis.call('GET', KEYS[2]) end
return found
""",
)

#: KEYS: artifact hash, namespace index, payload key, result marker (``d:T``, T unique per delete call and
#: reused by its retries). ARGV: index member, marker lifetime in milliseconds. Returns 1 if the artifact
#: existed. A delete that removes the artifact records that in the marker, so a retry of a call whose first
#: attempt ran and only lost its reply returns 1 too, instead of finding nothing.
DELETE = LuaScript(
    "delete",
    """
if redis.call('EXISTS', KEYS[4]) == 1 then return 1 end
local removed = redis.call('UNLINK', KEYS[1])
redis.call('UNLINK', KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
-- After the UNLINK (see the module's note on memory); pcall: a marker not written must not fail the delete.
if removed == 1 then redis.pcall('SET', KEYS[4], '1', 'PX', ARGV[2]) end
return removed
""",
)

#: KEYS: namespace index, result marker (``d:T``, T unique per clear call and reused by its retries), then
#: the artifacts' hashes, then their payload keys (in the same order). ARGV: batch number (counting the
#: call's batches), marker lifetime in milliseconds, then the artifacts' index members. Returns how many
#: artifacts existed (expired ones are gone already and not counted). A batch that removes something
#: records "batch:count" in the marker, so a retry of a batch that ran and only lost its reply returns the
#: same count; one marker per call is enough, because a call sends its next batch only after the reply.
#: Many keys per command, at most 1000 at a time: unpack is bounded by Lua's C stack (8000 values).
CLEAR = LuaScript(
    "clear",
    """
local done = redis.call('GET', KEYS[2])
if done then
  local batch, count = string.match(done, '^(%d+):(%d+)$')
  if batch == ARGV[1] then return tonumber(count) end
end
local count = #ARGV - 2
local removed = 0
for i = 3, count + 2, 1000 do
  removed = removed + redis.call('EXISTS', unpack(KEYS, i, math.min(i + 999, count + 2)))
end
for i = 3, 2 * count + 2, 1000 do
  redis.call('UNLINK', unpack(KEYS, i, math.min(i + 999, 2 * count + 2)))
end
for i = 3, count + 2, 1000 do
  redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, count + 2)))
end
if removed > 0 then redis.pcall('SET', KEYS[2], ARGV[1] .. ':' .. removed, 'PX', ARGV[2]) end
return removed
""",
)

#: KEYS: the namespace registry. ARGV: encoded namespace. Records, in server seconds, when a store last
#: announced it would write to the namespace.
REGISTER_NAMESPACE = LuaScript(
    "register_namespace",
    """
local clock = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(clock[1]), ARGV[1])
return 1
""",
)

#: KEYS: the namespace registry. ARGV: encoded namespace, grace in seconds. Forgets a namespace (which the
#: caller found empty) only if nobody announced a write to it within the grace period: a save announces
#: itself before it writes, so a namespace that is being written to is never forgotten.
FORGET_NAMESPACE = LuaScript(
    "forget_namespace",
    """
local clock = redis.call('TIME')
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) < tonumber(clock[1]) - tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
""",
)
