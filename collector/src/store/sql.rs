//! The schema and statements both databases run. One text, two dialects:
//! parameters are written `$N` (PostgreSQL; SQLite reads `?N`), and the
//! two-argument minimum and maximum are `LEAST`/`GREATEST` in PostgreSQL
//! and `min`/`max` in SQLite.

/// The schema version this build writes. A store with a newer one is
/// refused (an older tiergate must not write what it does not understand).
pub const SCHEMA_VERSION: u32 = 1;

/// Which database a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `sql` in this dialect.
    pub fn sql(self, sql: &str) -> String {
        match self {
            Dialect::Postgres => sql.replace("MIN2(", "LEAST(").replace("MAX2(", "GREATEST("),
            Dialect::Sqlite => sql
                .replace("MIN2(", "min(")
                .replace("MAX2(", "max(")
                .replace('$', "?"),
        }
    }
}

/// Tables, created when absent (version 1). Times are milliseconds since
/// the Unix epoch; an empty string stands for "none" in key columns (a
/// NULL would make every row with it distinct).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS observations (
        identity TEXT NOT NULL,
        tier TEXT NOT NULL,
        policy_version TEXT NOT NULL,
        destination TEXT NOT NULL,
        port INTEGER NOT NULL,
        protocol TEXT NOT NULL,
        verdict TEXT NOT NULL,
        rule_uid TEXT NOT NULL,
        count BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        PRIMARY KEY (identity, tier, policy_version, destination, port, protocol, verdict, rule_uid))",
    "CREATE INDEX IF NOT EXISTS observations_last_seen ON observations (last_seen)",
    "CREATE TABLE IF NOT EXISTS identities (
        identity TEXT NOT NULL,
        node TEXT NOT NULL,
        owner TEXT,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        last_attempt BIGINT NOT NULL,
        PRIMARY KEY (identity, node))",
    "CREATE TABLE IF NOT EXISTS identity_tiers (
        identity TEXT NOT NULL,
        node TEXT NOT NULL,
        tier TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        PRIMARY KEY (identity, node, tier))",
    "CREATE TABLE IF NOT EXISTS rules (
        uid TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        rule_index BIGINT NOT NULL,
        policy_version TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS policy_versions (
        version TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL)",
];

pub const GET_VERSION: &str = "SELECT value FROM meta WHERE key = 'schema_version'";
pub const SET_VERSION: &str = "INSERT INTO meta (key, value) VALUES ('schema_version', $1)";

pub const UPSERT_OBSERVATION: &str = "INSERT INTO observations
    (identity, tier, policy_version, destination, port, protocol, verdict, rule_uid, count, first_seen, last_seen)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (identity, tier, policy_version, destination, port, protocol, verdict, rule_uid) DO UPDATE SET
        count = observations.count + excluded.count,
        first_seen = MIN2(observations.first_seen, excluded.first_seen),
        last_seen = MAX2(observations.last_seen, excluded.last_seen)";

pub const UPSERT_IDENTITY: &str = "INSERT INTO identities
    (identity, node, owner, first_seen, last_seen, attempts, last_attempt)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (identity, node) DO UPDATE SET
        owner = COALESCE(excluded.owner, identities.owner),
        first_seen = MIN2(identities.first_seen, excluded.first_seen),
        last_seen = MAX2(identities.last_seen, excluded.last_seen),
        attempts = identities.attempts + excluded.attempts,
        last_attempt = MAX2(identities.last_attempt, excluded.last_attempt)";

pub const UPSERT_IDENTITY_TIER: &str = "INSERT INTO identity_tiers
    (identity, node, tier, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (identity, node, tier) DO UPDATE SET
        first_seen = MIN2(identity_tiers.first_seen, excluded.first_seen),
        last_seen = MAX2(identity_tiers.last_seen, excluded.last_seen)";

/// The later listing of a rule tells its tier, index and version.
pub const UPSERT_RULE: &str = "INSERT INTO rules
    (uid, tier, rule_index, policy_version, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (uid) DO UPDATE SET
        tier = CASE WHEN excluded.last_seen >= rules.last_seen THEN excluded.tier ELSE rules.tier END,
        rule_index = CASE WHEN excluded.last_seen >= rules.last_seen THEN excluded.rule_index ELSE rules.rule_index END,
        policy_version = CASE WHEN excluded.last_seen >= rules.last_seen THEN excluded.policy_version ELSE rules.policy_version END,
        first_seen = MIN2(rules.first_seen, excluded.first_seen),
        last_seen = MAX2(rules.last_seen, excluded.last_seen)";

pub const UPSERT_POLICY: &str = "INSERT INTO policy_versions
    (version, name, first_seen, last_seen) VALUES ($1, $2, $3, $4)
    ON CONFLICT (version) DO UPDATE SET
        name = CASE WHEN policy_versions.name = '' THEN excluded.name ELSE policy_versions.name END,
        first_seen = MIN2(policy_versions.first_seen, excluded.first_seen),
        last_seen = MAX2(policy_versions.last_seen, excluded.last_seen)";

pub const COUNT_OBSERVATIONS: &str = "SELECT count(*) FROM observations";

pub const SELECT_OBSERVATIONS: &str =
    "SELECT identity, tier, policy_version, destination, port, protocol,
        verdict, rule_uid, count, first_seen, last_seen
    FROM observations WHERE last_seen >= $1
    ORDER BY identity, tier, policy_version, destination, port, protocol, verdict, rule_uid";

/// A rule was in force as long as the policy version it was last listed in.
pub const SELECT_RULES: &str = "SELECT r.uid, r.tier, r.rule_index, r.policy_version, r.first_seen,
        MAX2(r.last_seen, COALESCE(p.last_seen, 0))
    FROM rules r LEFT JOIN policy_versions p ON p.version = r.policy_version
    ORDER BY r.uid";

pub const SELECT_IDENTITIES: &str =
    "SELECT identity, node, owner, first_seen, last_seen, attempts, last_attempt
    FROM identities ORDER BY identity, node";

pub const SELECT_IDENTITY_TIERS: &str =
    "SELECT identity, node, tier FROM identity_tiers ORDER BY identity, node, tier";

pub const SELECT_POLICIES: &str = "SELECT version, name, first_seen, last_seen
    FROM policy_versions ORDER BY first_seen, version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects() {
        let s = "SELECT MIN2(a, $1), MAX2(b, $2)";
        assert_eq!(Dialect::Sqlite.sql(s), "SELECT min(a, ?1), max(b, ?2)");
        assert_eq!(
            Dialect::Postgres.sql(s),
            "SELECT LEAST(a, $1), GREATEST(b, $2)"
        );
    }
}
