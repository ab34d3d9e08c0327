//! `--store postgres://…`: one PostgreSQL database shared by several
//! collector replicas. Every write is an `INSERT … ON CONFLICT DO UPDATE`
//! (counts add in the database, not in a replica), rows are written in key
//! order (replicas lock rows in one order: no deadlocks), and the schema
//! is created under an advisory lock. The connection is plain (no TLS):
//! a Unix socket or a trusted network.

use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Transaction};

use super::sql::{self, Dialect};
use super::{
    Aggregate, IdentityRow, ObservationKey, ObservationRow, PolicyVersionRow, RuleRow, Seen,
    StoreError, Written, attach_tiers, db_int, from_db, sorted,
};

const D: Dialect = Dialect::Postgres;

/// Serializes schema creation between replicas starting together.
const SCHEMA_LOCK: i64 = 0x7469_6572_6761_7465; // "tiergate"

const EVICT: &str = "DELETE FROM observations WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM observations ORDER BY last_seen LIMIT $1))";

/// Other replicas add rows too: the row count is read again this often.
const RECOUNT: Duration = Duration::from_secs(60);

pub struct PgStore {
    client: Client,
    url: String,
    name: String,
    max_rows: u64,
    /// Observation rows, as last counted plus what this replica inserted.
    rows: u64,
    counted: Instant,
}

/// `url` without its password (`user:***@`, `password=***`).
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out = format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
    }
    if let Some(i) = out.find("password=") {
        let end = out[i..].find('&').map_or(out.len(), |e| i + e);
        out.replace_range(i + "password=".len()..end, "***");
    }
    out
}

impl PgStore {
    pub fn open(url: &str, max_rows: u64) -> Result<PgStore, StoreError> {
        let name = redact(url);
        let mut client = connect(url, &name)?;
        let fail = |action| {
            let name = name.clone();
            move |error| StoreError::Postgres {
                store: name,
                action,
                error,
            }
        };
        let mut tx = client
            .transaction()
            .map_err(fail("cannot start the schema transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(fail("cannot take the schema lock"))?;
        for stmt in sql::SCHEMA {
            tx.execute(*stmt, &[])
                .map_err(fail("cannot create the schema"))?;
        }
        let found: Option<String> = tx
            .query_opt(sql::GET_VERSION, &[])
            .map_err(fail("cannot read the schema version"))?
            .map(|r| r.get(0));
        match found {
            None => {
                tx.execute(
                    &D.sql(sql::SET_VERSION),
                    &[&sql::SCHEMA_VERSION.to_string()],
                )
                .map_err(fail("cannot write the schema version"))?;
            }
            Some(v) if v.parse::<u32>().is_ok_and(|v| v <= sql::SCHEMA_VERSION) => {}
            Some(found) => return Err(StoreError::NewerSchema { store: name, found }),
        }
        let rows = count(&mut tx).map_err(fail("cannot count the observations"))?;
        tx.commit().map_err(fail("cannot commit the schema"))?;
        Ok(PgStore {
            client,
            url: url.to_string(),
            name,
            max_rows,
            rows,
            counted: Instant::now(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, action: &'static str) -> impl FnOnce(postgres::Error) -> StoreError + use<> {
        let store = self.name.clone();
        move |error| StoreError::Postgres {
            store,
            action,
            error,
        }
    }

    /// A connection that died (server restart, network) is made again.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            self.client = connect(&self.url, &self.name)?;
        }
        Ok(&mut self.client)
    }

    pub fn record(&mut self, agg: &Aggregate) -> Result<Written, StoreError> {
        let e_tx = self.err("cannot start a transaction");
        let e_w = self.err("cannot write observations");
        let e_c = self.err("cannot commit");
        let (rows_before, max_rows) = (self.rows, self.max_rows);
        let recount = self.counted.elapsed() >= RECOUNT;
        let mut tx = self.client()?.transaction().map_err(e_tx)?;
        let written = write(&mut tx, agg, rows_before, max_rows, recount).map_err(e_w)?;
        tx.commit().map_err(e_c)?;
        let (rows, evicted, counted) = written;
        self.rows = rows;
        if counted {
            self.counted = Instant::now();
        }
        Ok(Written { evicted })
    }

    fn read<T>(
        &mut self,
        action: &'static str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        row: impl Fn(&postgres::Row) -> T,
    ) -> Result<Vec<T>, StoreError> {
        let e = self.err(action);
        let rows = self.client()?.query(sql, params).map_err(e)?;
        Ok(rows.iter().map(row).collect())
    }

    pub fn observations(&mut self, since_ms: u64) -> Result<Vec<ObservationRow>, StoreError> {
        let sql = D.sql(sql::SELECT_OBSERVATIONS);
        self.read(
            "cannot read observations",
            &sql,
            &[&db_int(since_ms)],
            |r| ObservationRow {
                key: ObservationKey {
                    identity: r.get(0),
                    tier: r.get(1),
                    policy_version: r.get(2),
                    destination: r.get(3),
                    port: u16::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                    protocol: r.get(5),
                    verdict: r.get(6),
                    rule_uid: r.get(7),
                },
                seen: Seen {
                    count: from_db(r.get(8)),
                    first_ms: from_db(r.get(9)),
                    last_ms: from_db(r.get(10)),
                },
            },
        )
    }

    pub fn rules(&mut self) -> Result<Vec<RuleRow>, StoreError> {
        let sql = D.sql(sql::SELECT_RULES);
        self.read("cannot read rules", &sql, &[], |r| RuleRow {
            uid: r.get(0),
            tier: r.get(1),
            index: u32::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            policy_version: r.get(3),
            first_seen_ms: from_db(r.get(4)),
            last_seen_ms: from_db(r.get(5)),
        })
    }

    pub fn identities(&mut self) -> Result<Vec<IdentityRow>, StoreError> {
        let mut rows = self.read("cannot read identities", sql::SELECT_IDENTITIES, &[], |r| {
            let last_attempt = from_db(r.get(6));
            IdentityRow {
                identity: r.get(0),
                node: r.get(1),
                owner: r.get(2),
                tiers: Vec::new(),
                first_seen_ms: from_db(r.get(3)),
                last_seen_ms: from_db(r.get(4)),
                attempts: from_db(r.get(5)),
                last_attempt_ms: (last_attempt > 0).then_some(last_attempt),
            }
        })?;
        let tiers = self.read(
            "cannot read identities",
            sql::SELECT_IDENTITY_TIERS,
            &[],
            |r| (r.get(0), r.get(1), r.get(2)),
        )?;
        attach_tiers(&mut rows, tiers);
        Ok(rows)
    }

    pub fn policy_versions(&mut self) -> Result<Vec<PolicyVersionRow>, StoreError> {
        self.read(
            "cannot read policy versions",
            sql::SELECT_POLICIES,
            &[],
            |r| PolicyVersionRow {
                version: r.get(0),
                name: r.get(1),
                first_seen_ms: from_db(r.get(2)),
                last_seen_ms: from_db(r.get(3)),
            },
        )
    }
}

fn connect(url: &str, name: &str) -> Result<Client, StoreError> {
    Client::connect(url, NoTls).map_err(|error| StoreError::Postgres {
        store: name.to_string(),
        action: "cannot connect",
        error,
    })
}

fn count(tx: &mut Transaction<'_>) -> Result<u64, postgres::Error> {
    let n: i64 = tx.query_one(sql::COUNT_OBSERVATIONS, &[])?.get(0);
    Ok(from_db(n))
}

/// Writes one aggregate in `tx`; returns the row count after it, the rows
/// evicted and whether the count was read from the table.
fn write(
    tx: &mut Transaction<'_>,
    agg: &Aggregate,
    rows_before: u64,
    max_rows: u64,
    recount: bool,
) -> Result<(u64, u64, bool), postgres::Error> {
    // `xmax = 0`: the row was inserted, not updated.
    let st = tx.prepare(&format!(
        "{} RETURNING (xmax = 0)",
        D.sql(sql::UPSERT_OBSERVATION)
    ))?;
    let mut inserted = 0u64;
    for (k, s) in sorted(&agg.observations) {
        let new: bool = tx
            .query_one(
                &st,
                &[
                    &k.identity,
                    &k.tier,
                    &k.policy_version,
                    &k.destination,
                    &i32::from(k.port),
                    &k.protocol,
                    &k.verdict,
                    &k.rule_uid,
                    &db_int(s.count),
                    &db_int(s.first_ms),
                    &db_int(s.last_ms),
                ],
            )?
            .get(0);
        inserted += u64::from(new);
    }
    let st = tx.prepare(&D.sql(sql::UPSERT_IDENTITY))?;
    for ((id, node), s) in sorted(&agg.identities) {
        tx.execute(
            &st,
            &[
                id,
                node,
                &s.owner,
                &db_int(s.first_ms),
                &db_int(s.last_ms),
                &db_int(s.attempts),
                &db_int(s.last_attempt_ms),
            ],
        )?;
    }
    let st = tx.prepare(&D.sql(sql::UPSERT_IDENTITY_TIER))?;
    for ((id, node, tier), s) in sorted(&agg.identity_tiers) {
        tx.execute(
            &st,
            &[id, node, tier, &db_int(s.first_ms), &db_int(s.last_ms)],
        )?;
    }
    let st = tx.prepare(&D.sql(sql::UPSERT_RULE))?;
    for (uid, r) in sorted(&agg.rules) {
        tx.execute(
            &st,
            &[
                uid,
                &r.tier,
                &i64::from(r.index),
                &r.policy_version,
                &db_int(r.first_ms),
                &db_int(r.last_ms),
            ],
        )?;
    }
    let st = tx.prepare(&D.sql(sql::UPSERT_POLICY))?;
    for (v, p) in sorted(&agg.policies) {
        tx.execute(&st, &[v, &p.name, &db_int(p.first_ms), &db_int(p.last_ms)])?;
    }
    let mut rows = rows_before + inserted;
    let counted = recount || rows > max_rows;
    if counted {
        rows = count(tx)?;
    }
    let mut evicted = 0;
    if rows > max_rows {
        evicted = tx.execute(EVICT, &[&db_int(rows - max_rows)])?;
        rows -= evicted;
    }
    Ok((rows, evicted, counted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgresql:///db?host=/run/pg&password=pw&user=u"),
            "postgresql:///db?host=/run/pg&password=***&user=u"
        );
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
    }
}
