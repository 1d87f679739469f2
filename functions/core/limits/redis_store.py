"""The limits' counters in Redis, shared by every process and replica.

One Lua script per step (acquire, release), so each is atomic in Redis and costs one round
trip: checking every limit and taking what passes is one step, which no library offers
with refunds (the ``limits`` package counts hits in windows and cannot give tokens back;
a reservation that is never refunded would charge every reply its ``max_tokens``). The
scripts are sent once and then called by their SHA (``EVALSHA``; redis-py loads them
again if the server restarted). The time is Redis's own (``TIME``), so the clocks of the
gateway processes do not matter.

Keys, per API key id ``K``: ``sb:rl:{K}:r`` and ``:t`` (request and token buckets, a hash
of level and time), ``:c`` (concurrency: a sorted set of tickets scored by when they
expire, so a slot held by a process that died frees itself), ``:d:<YYYYMMDD>`` and
``:m:<YYYYMM>`` (tokens spent); per configuration ``sb:rl:cfg:<name>:c``. Single-node
Redis (or a primary with replicas): the keys of one check span two hash slots, which a
Redis Cluster refuses in one script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from functions.core.limits.store import DAY_TTL_S, MONTH_TTL_S, Ask, Verdict

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local l = tonumber(v[1])
  if l == nil then return cap end
  l = l + (now - tonumber(v[2])) * cap / 60000
  if l > cap then return cap end
  return l
end
local function keep(key, l, cap)
  redis.call('HSET', key, 'l', tostring(l), 't', now)
  -- Gone once it would be full again: a missing bucket is a full one.
  redis.call('PEXPIRE', key, math.ceil((cap - l) * 60000 / cap) + 1000)
end
"""

# KEYS: requests, tokens, key slots, day, month, config slots.
# ARGV: rpm, tpm, concurrent, per day, per month, config concurrent, tokens, ticket, slot ms.
ACQUIRE = (
    _COMMON
    + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local day, month, cconc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tokens, ticket, slot = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local rl, tl = 0, 0
if rpm > 0 then rl = level(KEYS[1], rpm) end
if tpm > 0 then tl = level(KEYS[2], tpm) end
local refused, wait = '', 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then refused, wait = 'concurrent', 1000 end
end
if refused == '' and cconc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) >= cconc then refused, wait = 'config_concurrent', 1000 end
end
if refused == '' and rpm > 0 and rl < 1 then
  refused, wait = 'requests', math.ceil((1 - rl) * 60000 / rpm)
end
if refused == '' and tpm > 0 then
  if tokens > tpm then refused = 'tokens_too_large'
  elseif tl < tokens then refused, wait = 'tokens', math.ceil((tokens - tl) * 60000 / tpm) end
end
if refused == '' and day > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') + tokens > day then
  refused = 'day'
end
if refused == '' and month > 0
  and tonumber(redis.call('GET', KEYS[5]) or '0') + tokens > month then
  refused = 'month'
end
if refused == '' then
  if rpm > 0 then rl = rl - 1; keep(KEYS[1], rl, rpm) end
  if tpm > 0 then tl = tl - tokens; keep(KEYS[2], tl, tpm) end
  if conc > 0 then
    redis.call('ZADD', KEYS[3], now + slot, ticket)
    redis.call('PEXPIRE', KEYS[3], slot)
  end
  if cconc > 0 then
    redis.call('ZADD', KEYS[6], now + slot, ticket)
    redis.call('PEXPIRE', KEYS[6], slot)
  end
  if day > 0 then redis.call('INCRBY', KEYS[4], tokens); redis.call('EXPIRE', KEYS[4], ARGV[10]) end
  if month > 0 then
    redis.call('INCRBY', KEYS[5], tokens); redis.call('EXPIRE', KEYS[5], ARGV[11])
  end
end
return {refused, wait, tostring(rl), tostring(tl)}
"""
)

# KEYS: as for ACQUIRE. ARGV: tpm, concurrent, per day, per month, config concurrent,
# refund (negative: a charge beyond the reservation), ticket.
RELEASE = (
    _COMMON
    + """
local tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2])
local day, month = tonumber(ARGV[3]), tonumber(ARGV[4])
local cconc, refund, ticket = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if tpm > 0 and refund ~= 0 then
  local l = level(KEYS[2], tpm) + refund
  if l > tpm then l = tpm end
  keep(KEYS[2], l, tpm)
end
if conc > 0 then redis.call('ZREM', KEYS[3], ticket) end
if cconc > 0 then redis.call('ZREM', KEYS[6], ticket) end
if refund ~= 0 and day > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('DECRBY', KEYS[4], refund)
end
if refund ~= 0 and month > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('DECRBY', KEYS[5], refund)
end
return 1
"""
)


def _keys(ask: Ask) -> list[str]:
    base = "sb:rl:{" + ask.key + "}"
    config = f"sb:rl:cfg:{ask.config}:c" if ask.config is not None else base + ":cfg"
    return [
        base + ":r",
        base + ":t",
        base + ":c",
        f"{base}:d:{ask.day}",
        f"{base}:m:{ask.month}",
        config,
    ]


class RedisStore:
    """The shared store; ``client``: a ``redis.asyncio.Redis`` this store owns (closed by
    :meth:`close`), built with a short socket timeout so a check never hangs."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._acquire: AsyncScript = client.register_script(ACQUIRE)
        self._release: AsyncScript = client.register_script(RELEASE)

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> RedisStore:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No retries: a check is answered within its timeout or falls back; redis-py's
            # default retries three times, tripling a hang.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(client)

    async def acquire(self, ask: Ask) -> Verdict:
        answer: list[Any] = await self._acquire(
            keys=_keys(ask),
            args=[
                ask.requests_per_minute,
                ask.tokens_per_minute,
                ask.max_concurrent,
                ask.tokens_per_day,
                ask.tokens_per_month,
                ask.config_concurrent,
                ask.tokens,
                ask.ticket,
                ask.slot_ttl_ms,
                DAY_TTL_S,
                MONTH_TTL_S,
            ],
        )
        refused = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        return Verdict(refused, int(answer[1]), float(answer[2]), float(answer[3]))

    async def release(self, ask: Ask, refund: int) -> None:
        await self._release(
            keys=_keys(ask),
            args=[
                ask.tokens_per_minute,
                ask.max_concurrent,
                ask.tokens_per_day,
                ask.tokens_per_month,
                ask.config_concurrent,
                refund,
                ask.ticket,
            ],
        )

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
