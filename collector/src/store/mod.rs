//! The observation store: per identity class, tier and policy version,
//! the destinations actually used and the denials, with counts and first
//! and last sight; the identities seen per node (the merged inventory with
//! last use); the rules and policy versions seen in force.
//!
//! `--store sqlite:PATH` (embedded, one collector) or
//! `--store postgres://…` (several collector replicas sharing one view).
//! Records become updates in `observe.rs`, are folded into an
//! [`Aggregate`] (about a second's worth) and written in one transaction
//! (`sqlite.rs`, `postgres.rs`, the same schema in `sql.rs`). The
//! collector feeds it from `feed.rs`; `tiergate advise` reads it through
//! [`Store`] or, without a collector, [`from_jsonl`].

mod aggregate;
mod batch;
pub mod feed;
mod identity;
mod jsonl;
mod keys;
mod observe;
mod postgres;
mod record;
mod scan;
mod shape;
mod sql;
mod sqlite;

pub use aggregate::Aggregate;
pub use identity::{cgroup_pattern, class as identity_class};
pub use jsonl::{JsonlError, JsonlReport, from_jsonl};
#[doc(hidden)]
pub use observe::observe_with_serde_json;
pub use observe::{
    ObservationKey, ObserveError, PolicySighting, RuleRef, Seen, Sighting, Update, observe,
};
pub use sql::SCHEMA_VERSION;

/// Observation rows kept by default (`--store-max-rows`).
pub const DEFAULT_MAX_ROWS: u64 = 1_000_000;

/// One row of observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationRow {
    pub key: ObservationKey,
    pub seen: Seen,
}

/// A rule uid seen in force (listed by a policy record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub uid: String,
    pub tier: String,
    /// Its index in the tier's egress list, as last listed.
    pub index: u32,
    /// The policy version that last listed it.
    pub policy_version: String,
    pub first_seen_ms: u64,
    /// The last time that version was seen in force.
    pub last_seen_ms: u64,
}

/// One identity class on one node: the inventory with last use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    pub identity: String,
    pub node: String,
    pub owner: Option<String>,
    /// Every tier it was seen in, sorted.
    pub tiers: Vec<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Connection attempts (allowed and denied).
    pub attempts: u64,
    /// The last connection attempt; None when only DNS queries were seen.
    pub last_attempt_ms: Option<u64>,
}

/// A policy version seen in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersionRow {
    pub version: String,
    pub name: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// Every message names the store (`--store sqlite:/var/lib/…`, a
/// PostgreSQL URL without its password) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--store {url}: {reason} (use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE)")]
    Url { url: String, reason: String },
    #[error("--store {store}: {action}: {error}")]
    Sqlite {
        store: String,
        action: &'static str,
        error: rusqlite::Error,
    },
    #[error("--store {store}: {action}: {error}")]
    Postgres {
        store: String,
        action: &'static str,
        error: ::postgres::Error,
    },
    #[error(
        "--store {store}: its schema version is {found}, newer than this tiergate knows ({SCHEMA_VERSION}); use a newer tiergate or another store"
    )]
    NewerSchema { store: String, found: String },
}

/// What a write did besides upserting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Observation rows evicted to stay within the bound.
    pub evicted: u64,
}

/// An open store.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    // Boxed: the client is large, and a Store is moved around by value.
    Postgres(Box<postgres::PgStore>),
}

impl Store {
    /// Opens (creating or migrating) the store `url` names:
    /// `sqlite:PATH` or `postgres://…` (`postgresql://` too). Blocking; a
    /// PostgreSQL store must not be opened on an async runtime's thread.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_bounded(url, DEFAULT_MAX_ROWS)
    }

    /// [`Store::open`] for reading (`tiergate advise`): a SQLite file that
    /// does not exist is an error rather than a new empty store.
    pub fn open_existing(url: &str) -> Result<Store, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.is_empty() && !std::path::Path::new(path).exists() {
                return Err(StoreError::Url {
                    url: url.to_string(),
                    reason: "no such file (a collector with this --store creates it)".into(),
                });
            }
        }
        Self::open(url)
    }

    /// [`Store::open`] keeping at most `max_rows` observation rows.
    pub fn open_bounded(url: &str, max_rows: u64) -> Result<Store, StoreError> {
        let bad = |reason: &str| StoreError::Url {
            url: postgres::redact(url),
            reason: reason.to_string(),
        };
        if max_rows == 0 {
            return Err(bad("--store-max-rows must be at least 1"));
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("no file after sqlite:"));
            }
            return Ok(Store::Sqlite(sqlite::SqliteStore::open(
                std::path::Path::new(path),
                max_rows,
            )?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store::Postgres(Box::new(postgres::PgStore::open(
                url, max_rows,
            )?)));
        }
        Err(bad(match url.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() => "unknown kind of store",
            _ => "not a store URL",
        }))
    }

    /// The store as `--store` named it, without a password.
    pub fn name(&self) -> &str {
        match self {
            Store::Sqlite(s) => s.name(),
            Store::Postgres(s) => s.name(),
        }
    }

    /// Writes an aggregate in one transaction: counts add, first and last
    /// sight widen; then evicts the least recently seen observations over
    /// the bound. On error nothing is written.
    pub fn record(&mut self, agg: &Aggregate) -> Result<Written, StoreError> {
        match self {
            Store::Sqlite(s) => s.record(agg),
            Store::Postgres(s) => s.record(agg),
        }
    }

    /// Observations last seen at or after `since_ms` (0: all), sorted by key.
    pub fn observations(&mut self, since_ms: u64) -> Result<Vec<ObservationRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.observations(since_ms),
            Store::Postgres(s) => s.observations(since_ms),
        }
    }

    /// Every rule uid seen in force, sorted by uid.
    pub fn rules(&mut self) -> Result<Vec<RuleRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.rules(),
            Store::Postgres(s) => s.rules(),
        }
    }

    /// The inventory: one row per (identity class, node), sorted.
    pub fn identities(&mut self) -> Result<Vec<IdentityRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.identities(),
            Store::Postgres(s) => s.identities(),
        }
    }

    /// Every policy version seen, oldest first.
    pub fn policy_versions(&mut self) -> Result<Vec<PolicyVersionRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.policy_versions(),
            Store::Postgres(s) => s.policy_versions(),
        }
    }
}

/// Milliseconds as the databases hold them (BIGINT). Times and counts
/// beyond i64 do not occur; they are clamped rather than wrapped.
fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Back from BIGINT; a negative value (written by someone else) reads as 0.
fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Sorted entries, so that replicas writing one database take row locks
/// in the same order (no deadlocks between them).
fn sorted<'m, K: Ord + 'm, V: 'm>(
    m: impl IntoIterator<Item = (&'m K, &'m V)>,
) -> Vec<(&'m K, &'m V)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// Groups (identity, node, tier) rows into each identity row's tiers.
fn attach_tiers(rows: &mut [IdentityRow], tiers: Vec<(String, String, String)>) {
    let mut by: std::collections::HashMap<(String, String), Vec<String>> =
        std::collections::HashMap::new();
    for (id, node, tier) in tiers {
        by.entry((id, node)).or_default().push(tier);
    }
    for r in rows {
        if let Some(t) = by.remove(&(r.identity.clone(), r.node.clone())) {
            r.tiers = t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_err(url: &str) -> String {
        match Store::open(url) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn urls_that_name_no_store_are_refused_clearly() {
        assert_eq!(
            open_err("mysql://db/x"),
            "--store mysql://db/x: unknown kind of store (use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE)"
        );
        assert!(open_err("/var/lib/x.db").contains("not a store URL"));
        assert!(open_err("sqlite:").contains("no file after sqlite:"));
        assert_eq!(
            Store::open_existing("sqlite:/nonexistent/store.db")
                .err()
                .unwrap()
                .to_string(),
            "--store sqlite:/nonexistent/store.db: no such file (a collector with this --store creates it) (use sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE)"
        );
        assert!(
            open_err("postgres://u:secret@127.0.0.1:1/db").contains("u:***@127.0.0.1:1/db"),
            "the password is not shown"
        );
        assert!(!open_err("postgres://u:secret@127.0.0.1:1/db").contains("secret"));
        assert!(
            Store::open_bounded("sqlite:/tmp/x", 0)
                .err()
                .unwrap()
                .to_string()
                .contains("--store-max-rows")
        );
    }
}
