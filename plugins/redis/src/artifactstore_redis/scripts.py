"""The Lua scripts that make each change to a namespace atomic on the server.

Every script touches only keys of one namespace, which share a hash tag and so one cluster slot; every
key it touches is passed in ``KEYS``. Scripts run whole or not at all, so a reader never sees an artifact
without its index entry or the other way round. The save script's first write is ``HSET``, a command that
may grow memory, so a server at ``maxmemory`` refuses the save before it changes anything (Redis checks
memory at a script's first write); delete and clear only free memory and work at ``maxmemory``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "CLEAR",
    "DELETE",
    "FORGET_NAMESPACE",
    "REGISTER_NAMESPACE",
    "SAVE",
    "SAVE_EXISTS",
    "SAVE_KEPT",
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


#: SAVE's result: an equal artifact was already stored and is kept (a safe retry).
SAVE_KEPT = 0
#: SAVE's result: a different artifact is stored and overwrite was not asked for.
SAVE_EXISTS = 1
#: SAVE's result: the artifact was written.
SAVE_WRITTEN = 2

#: KEYS: artifact hash, namespace index. ARGV: index member (encoded step id), identity key, head, payload,
#: overwrite ("1" or "0"), time to live in milliseconds ("0": none).
SAVE = LuaScript(
    "save",
    """
local current = redis.call('HGET', KEYS[1], 'id')
if current and ARGV[5] ~= '1' then
  if current == ARGV[2] then return 0 end
  return 1
end
redis.call('HSET', KEYS[1], 'head', ARGV[3], 'payload', ARGV[4], 'id', ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('PEXPIREAT', KEYS[1], now + ttl)
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
else
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[2], 'inf', ARGV[1])
end
-- Index entries of expired artifacts are pruned a few at a time, so no call does unbounded work.
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, 32)
if #stale > 0 then redis.call('ZREM', KEYS[2], unpack(stale)) end
return 2
""",
)

#: KEYS: artifact hash, namespace index. ARGV: index member. Returns 1 if the artifact existed.
DELETE = LuaScript(
    "delete",
    """
local removed = redis.call('UNLINK', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
""",
)

#: KEYS: namespace index, then artifact hashes. ARGV: their index members. Returns how many artifacts
#: existed (expired ones are gone already and not counted).
CLEAR = LuaScript(
    "clear",
    """
local removed = 0
for i = 2, #KEYS do removed = removed + redis.call('UNLINK', KEYS[i]) end
redis.call('ZREM', KEYS[1], unpack(ARGV))
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
