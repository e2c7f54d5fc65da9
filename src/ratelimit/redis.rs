//! The Redis backend: the one file that talks to Redis (STYLE §2).
//!
//! It owns a small fixed pool of multiplexed connections (each pipelines any
//! number of concurrent requests over one socket, so no request opens a
//! connection), one more connection for each thread that checks from a
//! current-thread runtime (the proxy's serving threads; see
//! [`RedisBackend::connection`]), and the Lua script that checks and counts
//! all of a subject's windows in one atomic round trip. It does not decide what to do when
//! Redis fails: every failure comes back as a [`RedisFailure`], and `mod.rs`
//! falls back to local counters, logs, and asks for [`RedisBackend::connect`]
//! again from its probe.
//!
//! Data layout: one hash per subject and window length, named
//! `<prefix>{<subject>}:<per>` (`<per>` in whole seconds) and holding
//! `s` (window start, Unix ms) and `c` (count). The braces are a cluster
//! hash tag, so all of one subject's keys share a slot and one script may
//! touch them all. Each hash expires at its window's end (`PEXPIREAT`), so
//! Redis holds at most one small hash per active subject and window length.
//!
//! Time comes from Redis `TIME` inside the script, not from the replica:
//! replicas with skewed clocks still agree on which window a request is in.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::thread::ThreadId;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, Script, ServerErrorKind};

use super::window::{self, Observed, Verdict};
use super::{RateLimitError, RedisSettings};
use crate::policy::plans::PlanLimit;

/// Checks every window of one subject and counts the request in all of them
/// only if all have room: one atomic step, so concurrent requests from any
/// number of replicas see each other's counts exactly.
///
/// `KEYS[i]` is window i's hash; `ARGV[2i-1]` its limit and `ARGV[2i]` its
/// length in ms. Returns `{allowed (1 or 0), now_ms, used_1, …, used_n}`
/// where `used_i` includes this request if it was allowed. With no keys it
/// just answers `{1, now_ms}`, which the probe uses to test the round trip.
///
/// Numbers written back go through `string.format('%d')`: Redis may render
/// a bare Lua number like 1.7e12 in exponent form, which `PEXPIREAT` rejects.
const CHECK_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local starts, used = {}, {}
local allowed = 1
for i = 1, n do
  local limit = tonumber(ARGV[2 * i - 1])
  local per = tonumber(ARGV[2 * i])
  local start = now - (now % per)
  local state = redis.call('HMGET', KEYS[i], 's', 'c')
  local c = 0
  if tonumber(state[1]) == start then c = tonumber(state[2]) or 0 end
  starts[i] = start
  used[i] = c
  if c >= limit then allowed = 0 end
end
if allowed == 1 then
  for i = 1, n do
    used[i] = used[i] + 1
    redis.call('HSET', KEYS[i], 's', string.format('%d', starts[i]), 'c', string.format('%d', used[i]))
    redis.call('PEXPIREAT', KEYS[i], string.format('%d', starts[i] + tonumber(ARGV[2 * i])))
  end
end
local reply = {allowed, now}
for i = 1, n do reply[i + 2] = used[i] end
return reply
";

/// Why a Redis check or connect did not produce an answer: unreachable,
/// too slow, or an unexpected reply. Carries only the cause's text, which
/// never includes the URL or its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RedisFailure(String);

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<redis::RedisError> for RedisFailure {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// A Redis server holding the shared counters, reached through a fixed pool.
pub(super) struct RedisBackend {
    client: Client,
    config: AsyncConnectionConfig,
    // std RwLock: read for the instant it takes to clone one connection
    // handle, written only when the probe installs a fresh pool; never held
    // across an await.
    pool: RwLock<Vec<MultiplexedConnection>>,
    next: AtomicUsize,
    /// Each current-thread runtime's own connection, by thread, with the
    /// [`Self::generation`] it was opened in (std RwLock, like `pool`).
    local: RwLock<HashMap<ThreadId, (u64, MultiplexedConnection)>>,
    /// How many pools [`Self::connect`] has installed: a local connection
    /// from an earlier one may be dead, so it is opened again.
    generation: AtomicU64,
    /// SHA1 of [`CHECK_SCRIPT`], for `EVALSHA`.
    sha: String,
    key_prefix: String,
    pool_size: usize,
    connect_timeout: Duration,
    timeout: Duration,
    /// `host:port` (or socket path): what logs may say about the server.
    target: String,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's own Debug would print the password.
        f.debug_struct("RedisBackend")
            .field("target", &self.target)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Parses the URL; connects nothing yet (see [`RedisBackend::connect`]).
    pub(super) fn new(settings: &RedisSettings) -> Result<Self, RateLimitError> {
        let client = Client::open(settings.url.as_str()).map_err(|e| RateLimitError::InvalidRedisUrl {
            reason: e.to_string(),
        })?;
        let target = client.get_connection_info().addr().to_string();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.timeout));
        Ok(Self {
            client,
            config,
            pool: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            local: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            sha: Script::new(CHECK_SCRIPT).get_hash().to_owned(),
            key_prefix: settings.key_prefix.clone(),
            pool_size: settings.pool_size.max(1),
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            target,
        })
    }

    /// Where the counters live, safe to log.
    pub(super) fn target(&self) -> &str {
        &self.target
    }

    /// Opens a fresh pool, proves it with one script round trip (which also
    /// loads the script), and only then replaces the old pool, whose
    /// connections may be dead. Bounded by the connect plus the response
    /// timeout.
    pub(super) async fn connect(&self) -> Result<(), RedisFailure> {
        let open = async {
            let conns = try_join_all((0..self.pool_size).map(|_| {
                self.client
                    .get_multiplexed_async_connection_with_config(&self.config)
            }))
            .await?;
            let mut first = conns
                .first()
                .cloned()
                .ok_or_else(|| RedisFailure("empty pool".into()))?;
            let reply = self.run_script(&mut first, &[], &[]).await?;
            if reply.len() != 2 {
                return Err(RedisFailure(format!(
                    "probe reply has {} values, not 2",
                    reply.len()
                )));
            }
            Ok::<_, RedisFailure>(conns)
        };
        let bound = self.connect_timeout.saturating_add(self.timeout);
        let conns = tokio::time::timeout(bound, open)
            .await
            .map_err(|_| RedisFailure(format!("no connection within {bound:?}")))??;
        *self.pool.write().unwrap_or_else(PoisonError::into_inner) = conns;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.local.write().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(())
    }

    /// Checks and counts `subject` against `limits` in one round trip,
    /// bounded by the response timeout.
    pub(super) async fn check(&self, subject: &str, limits: &[PlanLimit]) -> Result<Verdict, RedisFailure> {
        let mut conn = self.connection().await?;
        let keys: Vec<String> = limits.iter().map(|l| self.key(subject, l)).collect();
        let args: Vec<u64> = limits
            .iter()
            .flat_map(|l| [l.requests, window::per_ms(l.per)])
            .collect();
        let reply = tokio::time::timeout(self.timeout, self.run_script(&mut conn, &keys, &args))
            .await
            .map_err(|_| RedisFailure(format!("no answer within {:?}", self.timeout)))??;
        parse_reply(&reply, limits)
    }

    /// The connection a check uses. On a current-thread runtime (the
    /// proxy's serving threads), the thread's own, opened on its first check
    /// after each [`Self::connect`]: a multiplexed connection's driver task
    /// runs on the runtime that opened it, and one driven from another
    /// thread costs every check two thread hops (`bench/proxy.sh`'s Redis
    /// row lost 17% of its throughput to them). Elsewhere, one from the
    /// pool, round robin. Nothing is opened before `connect` has proved the
    /// server, so a check while disconnected fails at once, as before.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisFailure> {
        let thread = std::thread::current().id();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((opened_in, conn)) = self
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&thread)
        {
            if *opened_in == generation {
                return Ok(conn.clone());
            }
        }
        let own_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let pooled = self.pooled()?;
        if !own_thread {
            return Ok(pooled);
        }
        let bound = self.connect_timeout.saturating_add(self.timeout);
        let conn = tokio::time::timeout(
            bound,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|_| RedisFailure(format!("no connection within {bound:?}")))??;
        // A `connect` meanwhile makes this entry stale by its generation.
        self.local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(thread, (generation, conn.clone()));
        Ok(conn)
    }

    /// A connection from the pool, round robin.
    fn pooled(&self) -> Result<MultiplexedConnection, RedisFailure> {
        let pool = self.pool.read().unwrap_or_else(PoisonError::into_inner);
        if pool.is_empty() {
            return Err(RedisFailure("not connected".into()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        Ok(pool[i].clone())
    }

    /// `<prefix>{<subject>}:<per seconds>`; a length that is not whole
    /// seconds (config never makes one) gets an `ms` suffix so it cannot
    /// share a key with a different window.
    fn key(&self, subject: &str, limit: &PlanLimit) -> String {
        let per_ms = window::per_ms(limit.per);
        let prefix = &self.key_prefix;
        if per_ms % 1_000 == 0 {
            format!("{prefix}{{{subject}}}:{}", per_ms / 1_000)
        } else {
            format!("{prefix}{{{subject}}}:{per_ms}ms")
        }
    }

    /// `EVALSHA`, and `EVAL` with the source when the server does not know
    /// the script (restarted or flushed); `EVAL` caches it for next time.
    async fn run_script(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[String],
        args: &[u64],
    ) -> Result<Vec<i64>, RedisFailure> {
        match script_cmd("EVALSHA", &self.sha, keys, args)
            .query_async(conn)
            .await
        {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                Ok(script_cmd("EVAL", CHECK_SCRIPT, keys, args)
                    .query_async(conn)
                    .await?)
            }
            reply => Ok(reply?),
        }
    }
}

#[cfg(test)]
impl RedisBackend {
    /// Local connections held, and how many of them the current pool
    /// generation opened.
    pub(super) fn local_connections(&self) -> (usize, usize) {
        let generation = self.generation.load(Ordering::Acquire);
        let local = self.local.read().unwrap_or_else(PoisonError::into_inner);
        let current = local
            .values()
            .filter(|(opened_in, _)| *opened_in == generation)
            .count();
        (local.len(), current)
    }

    /// Deletes every key under this backend's prefix (tests clean up after
    /// themselves; their windows would otherwise linger until they end).
    pub(super) async fn delete_prefixed_keys(&self) -> Result<(), RedisFailure> {
        let mut conn = self.connection().await?;
        let pattern = format!("{}*", self.key_prefix);
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Empties the server's script cache, so the next check meets `NOSCRIPT`.
    pub(super) async fn flush_scripts(&self) -> Result<(), RedisFailure> {
        let mut conn = self.connection().await?;
        Ok(redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await?)
    }
}

fn script_cmd(verb: &str, script: &str, keys: &[String], args: &[u64]) -> Cmd {
    let mut cmd = redis::cmd(verb);
    cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// The script's `{allowed, now_ms, used…}` as a verdict.
fn parse_reply(reply: &[i64], limits: &[PlanLimit]) -> Result<Verdict, RedisFailure> {
    let unexpected = || RedisFailure(format!("unexpected script reply {reply:?}"));
    let [allowed, now_ms, used @ ..] = reply else {
        return Err(unexpected());
    };
    if used.len() != limits.len() {
        return Err(unexpected());
    }
    let now_ms = u64::try_from(*now_ms).map_err(|_| unexpected())?;
    let mut windows = Vec::with_capacity(limits.len());
    for (limit, used) in limits.iter().zip(used) {
        windows.push(Observed {
            limit: limit.requests,
            per_ms: window::per_ms(limit.per),
            used: u64::try_from(*used).map_err(|_| unexpected())?,
        });
    }
    Ok(window::verdict(now_ms, *allowed == 1, windows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::WindowStatus;

    fn limit(requests: u64, per: Duration) -> PlanLimit {
        PlanLimit { requests, per }
    }

    #[test]
    fn keys_share_a_hash_tag_per_subject() {
        let backend = RedisBackend::new(&RedisSettings::new("redis://:secret@127.0.0.1:6379")).unwrap();
        let minute = limit(1, Duration::from_secs(60));
        let odd = limit(1, Duration::from_millis(1_500));
        assert_eq!(backend.key("key_01", &minute), "keygate:rl:{key_01}:60");
        assert_eq!(backend.key("key_01", &odd), "keygate:rl:{key_01}:1500ms");
        assert_eq!(backend.target(), "127.0.0.1:6379");
        assert!(!format!("{backend:?}").contains("secret"));
    }

    #[test]
    fn replies_become_verdicts() {
        let limits = [
            limit(5, Duration::from_secs(60)),
            limit(100, Duration::from_secs(3_600)),
        ];
        // 30 s into an hour.
        let now: i64 = 1_700_002_800_000 + 30_000;
        let allowed = parse_reply(&[1, now, 5, 7], &limits).unwrap();
        assert_eq!(
            allowed,
            Verdict::Allowed(WindowStatus {
                limit: 5,
                remaining: 0,
                reset: Duration::from_secs(30),
            })
        );
        let denied = parse_reply(&[0, now, 5, 7], &limits).unwrap();
        assert_eq!(denied.retry_after_secs(), Some(30));
        for bad in [
            &[1, now, 5][..],
            &[1][..],
            &[1, -1, 5, 7][..],
            &[1, now, -5, 7][..],
        ] {
            assert!(parse_reply(bad, &limits).is_err(), "{bad:?}");
        }
    }
}
