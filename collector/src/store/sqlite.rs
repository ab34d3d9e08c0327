//! `--store sqlite:PATH`: an embedded SQLite database (bundled, no system
//! library), in WAL mode, one transaction per aggregate.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::sql::{self, Dialect};
use super::{
    Aggregate, IdentityRow, ObservationKey, ObservationRow, PolicyVersionRow, RuleRow, Seen,
    StoreError, Written, attach_tiers, db_int, from_db, sorted,
};

const D: Dialect = Dialect::Sqlite;

/// Evicts the least recently seen observation rows.
const EVICT: &str = "DELETE FROM observations WHERE rowid IN
    (SELECT rowid FROM observations ORDER BY last_seen LIMIT ?1)";

pub struct SqliteStore {
    conn: Connection,
    name: String,
    max_rows: u64,
    /// Observation rows in the table (one writer: exact).
    rows: u64,
}

impl SqliteStore {
    pub fn open(path: &Path, max_rows: u64) -> Result<SqliteStore, StoreError> {
        let name = format!("sqlite:{}", path.display());
        let fail = |action| {
            let name = name.clone();
            move |error| StoreError::Sqlite {
                store: name,
                action,
                error,
            }
        };
        let mut conn = Connection::open(path).map_err(fail("cannot open the database file"))?;
        // WAL: readers (`tiergate advise`) do not block the writer; NORMAL
        // sync is durable across a process crash, which is what a collector
        // restart is.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail("cannot switch to WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail("cannot set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(fail("cannot set the busy timeout"))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail("cannot start the schema transaction"))?;
        for stmt in sql::SCHEMA {
            tx.execute(stmt, [])
                .map_err(fail("cannot create the schema"))?;
        }
        let found: Option<String> = tx
            .query_row(sql::GET_VERSION, [], |r| r.get(0))
            .optional()
            .map_err(fail("cannot read the schema version"))?;
        match found {
            None => {
                tx.execute(&D.sql(sql::SET_VERSION), [sql::SCHEMA_VERSION.to_string()])
                    .map_err(fail("cannot write the schema version"))?;
            }
            Some(v) if v.parse::<u32>().is_ok_and(|v| v <= sql::SCHEMA_VERSION) => {}
            Some(found) => return Err(StoreError::NewerSchema { store: name, found }),
        }
        let rows: i64 = tx
            .query_row(sql::COUNT_OBSERVATIONS, [], |r| r.get(0))
            .map_err(fail("cannot count the observations"))?;
        tx.commit().map_err(fail("cannot commit the schema"))?;
        Ok(SqliteStore {
            conn,
            name,
            max_rows,
            rows: from_db(rows),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + use<> {
        let store = self.name.clone();
        move |error| StoreError::Sqlite {
            store,
            action,
            error,
        }
    }

    pub fn record(&mut self, agg: &Aggregate) -> Result<Written, StoreError> {
        let e_tx = self.err("cannot start a transaction");
        let e_w = self.err("cannot write observations");
        let e_c = self.err("cannot commit");
        let (rows_before, max_rows) = (self.rows, self.max_rows);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e_tx)?;
        let mut inserted = 0u64;
        let mut evicted = 0u64;
        let result = (|| -> rusqlite::Result<()> {
            // Which keys are new decides the row count: ask before the upsert.
            let mut exists = tx.prepare_cached(
                "SELECT 1 FROM observations WHERE identity = ?1 AND tier = ?2 AND policy_version = ?3
                 AND destination = ?4 AND port = ?5 AND protocol = ?6 AND verdict = ?7 AND rule_uid = ?8",
            )?;
            let mut upsert = tx.prepare_cached(&D.sql(sql::UPSERT_OBSERVATION))?;
            for (k, s) in sorted(&agg.observations) {
                let key = params![
                    k.identity,
                    k.tier,
                    k.policy_version,
                    k.destination,
                    i32::from(k.port),
                    k.protocol,
                    k.verdict,
                    k.rule_uid
                ];
                if !exists.exists(key)? {
                    inserted += 1;
                }
                upsert.execute(params![
                    k.identity,
                    k.tier,
                    k.policy_version,
                    k.destination,
                    i32::from(k.port),
                    k.protocol,
                    k.verdict,
                    k.rule_uid,
                    db_int(s.count),
                    db_int(s.first_ms),
                    db_int(s.last_ms)
                ])?;
            }
            let mut st = tx.prepare_cached(&D.sql(sql::UPSERT_IDENTITY))?;
            for ((id, node), s) in sorted(&agg.identities) {
                st.execute(params![
                    id,
                    node,
                    s.owner,
                    db_int(s.first_ms),
                    db_int(s.last_ms),
                    db_int(s.attempts),
                    db_int(s.last_attempt_ms)
                ])?;
            }
            let mut st = tx.prepare_cached(&D.sql(sql::UPSERT_IDENTITY_TIER))?;
            for ((id, node, tier), s) in sorted(&agg.identity_tiers) {
                st.execute(params![
                    id,
                    node,
                    tier,
                    db_int(s.first_ms),
                    db_int(s.last_ms)
                ])?;
            }
            let mut st = tx.prepare_cached(&D.sql(sql::UPSERT_RULE))?;
            for (uid, r) in sorted(&agg.rules) {
                st.execute(params![
                    uid,
                    r.tier,
                    i64::from(r.index),
                    r.policy_version,
                    db_int(r.first_ms),
                    db_int(r.last_ms)
                ])?;
            }
            let mut st = tx.prepare_cached(&D.sql(sql::UPSERT_POLICY))?;
            for (v, p) in sorted(&agg.policies) {
                st.execute(params![v, p.name, db_int(p.first_ms), db_int(p.last_ms)])?;
            }
            let rows = rows_before + inserted;
            if rows > max_rows {
                evicted = tx.execute(EVICT, [db_int(rows - max_rows)])? as u64;
            }
            Ok(())
        })();
        result.map_err(e_w)?;
        tx.commit().map_err(e_c)?;
        self.rows = rows_before + inserted - evicted;
        Ok(Written { evicted })
    }

    fn read<T>(
        &self,
        action: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let run = || -> rusqlite::Result<Vec<T>> {
            let mut st = self.conn.prepare_cached(sql)?;
            st.query_map(params, row)?.collect()
        };
        run().map_err(self.err(action))
    }

    pub fn observations(&mut self, since_ms: u64) -> Result<Vec<ObservationRow>, StoreError> {
        let sql = D.sql(sql::SELECT_OBSERVATIONS);
        self.read("cannot read observations", &sql, [db_int(since_ms)], |r| {
            Ok(ObservationRow {
                key: ObservationKey {
                    identity: r.get(0)?,
                    tier: r.get(1)?,
                    policy_version: r.get(2)?,
                    destination: r.get(3)?,
                    port: u16::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                    protocol: r.get(5)?,
                    verdict: r.get(6)?,
                    rule_uid: r.get(7)?,
                },
                seen: Seen {
                    count: from_db(r.get(8)?),
                    first_ms: from_db(r.get(9)?),
                    last_ms: from_db(r.get(10)?),
                },
            })
        })
    }

    pub fn rules(&mut self) -> Result<Vec<RuleRow>, StoreError> {
        let sql = D.sql(sql::SELECT_RULES);
        self.read("cannot read rules", &sql, [], |r| {
            Ok(RuleRow {
                uid: r.get(0)?,
                tier: r.get(1)?,
                index: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                policy_version: r.get(3)?,
                first_seen_ms: from_db(r.get(4)?),
                last_seen_ms: from_db(r.get(5)?),
            })
        })
    }

    pub fn identities(&mut self) -> Result<Vec<IdentityRow>, StoreError> {
        let mut rows = self.read("cannot read identities", sql::SELECT_IDENTITIES, [], |r| {
            let last_attempt = from_db(r.get(6)?);
            Ok(IdentityRow {
                identity: r.get(0)?,
                node: r.get(1)?,
                owner: r.get(2)?,
                tiers: Vec::new(),
                first_seen_ms: from_db(r.get(3)?),
                last_seen_ms: from_db(r.get(4)?),
                attempts: from_db(r.get(5)?),
                last_attempt_ms: (last_attempt > 0).then_some(last_attempt),
            })
        })?;
        let tiers = self.read(
            "cannot read identities",
            sql::SELECT_IDENTITY_TIERS,
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        attach_tiers(&mut rows, tiers);
        Ok(rows)
    }

    pub fn policy_versions(&mut self) -> Result<Vec<PolicyVersionRow>, StoreError> {
        self.read(
            "cannot read policy versions",
            sql::SELECT_POLICIES,
            [],
            |r| {
                Ok(PolicyVersionRow {
                    version: r.get(0)?,
                    name: r.get(1)?,
                    first_seen_ms: from_db(r.get(2)?),
                    last_seen_ms: from_db(r.get(3)?),
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::tests::connection;
    use super::super::{Store, observe};
    use super::*;
    use serde_json::json;

    struct TempDb(std::path::PathBuf);
    impl TempDb {
        fn new(name: &str) -> TempDb {
            let dir = std::env::temp_dir().join(format!("tg-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDb(dir)
        }
        fn url(&self) -> String {
            format!("sqlite:{}", self.0.join("store.db").display())
        }
    }
    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn agg(records: &[serde_json::Value]) -> Aggregate {
        let mut a = Aggregate::default();
        for r in records {
            a.add(observe(r.to_string().as_bytes()).unwrap().unwrap());
        }
        a
    }

    fn conn_at(verdict: &str, ip: &str, time: u64) -> serde_json::Value {
        let mut v = connection(verdict, ip, 443);
        v["time"] = json!(time);
        v
    }

    #[test]
    fn counts_survive_a_reopen_and_keep_adding() {
        let db = TempDb::new("reopen");
        let policy = json!({"class_uid": 0, "time": 1,
            "unmapped": {"tiergate": {"kind": "policy", "action": "applied",
                "policy": {"name": "p", "version": "sha256:ab"},
                "rules": [{"tier": "tier0", "index": 3, "uid": "r-1"}]}}});
        {
            let mut s = Store::open(&db.url()).unwrap();
            s.record(&agg(&[
                policy,
                conn_at("allow", "10.0.0.1", 10),
                conn_at("allow", "10.0.0.1", 20),
                conn_at("deny", "10.0.0.2", 15),
            ]))
            .unwrap();
        }
        let mut s = Store::open(&db.url()).unwrap();
        s.record(&agg(&[conn_at("allow", "10.0.0.1", 5)])).unwrap();
        let rows = s.observations(0).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.destination, "10.0.0.1");
        assert_eq!(
            rows[0].seen,
            Seen {
                count: 3,
                first_ms: 5,
                last_ms: 20
            }
        );
        assert_eq!(rows[1].seen, Seen::at(15, 1));
        assert_eq!(s.observations(16).unwrap().len(), 1);
        let ids = s.identities().unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].identity, "cgroup:/agents/tier0/session-*.scope");
        assert_eq!(ids[0].node, "node-1");
        assert_eq!(ids[0].tiers, vec!["tier0".to_string()]);
        assert_eq!((ids[0].attempts, ids[0].last_attempt_ms), (4, Some(20)));
        assert_eq!((ids[0].first_seen_ms, ids[0].last_seen_ms), (5, 20));
        let rules = s.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            (
                rules[0].index,
                rules[0].first_seen_ms,
                rules[0].last_seen_ms
            ),
            (3, 1, 20)
        );
        let pv = s.policy_versions().unwrap();
        assert_eq!(pv.len(), 1);
        assert_eq!(
            (pv[0].name.as_str(), pv[0].first_seen_ms, pv[0].last_seen_ms),
            ("p", 1, 20)
        );
    }

    #[test]
    fn the_bound_evicts_the_least_recently_seen() {
        let db = TempDb::new("bound");
        let mut s = Store::open_bounded(&db.url(), 3).unwrap();
        let w = s
            .record(&agg(&[
                conn_at("allow", "10.0.0.1", 10),
                conn_at("allow", "10.0.0.2", 20),
                conn_at("allow", "10.0.0.3", 30),
            ]))
            .unwrap();
        assert_eq!(w.evicted, 0);
        // .1 used again: now .2 is the least recently seen.
        let w = s
            .record(&agg(&[
                conn_at("allow", "10.0.0.1", 40),
                conn_at("allow", "10.0.0.4", 50),
                conn_at("allow", "10.0.0.5", 60),
            ]))
            .unwrap();
        assert_eq!(w.evicted, 2);
        let dsts: Vec<String> = s
            .observations(0)
            .unwrap()
            .into_iter()
            .map(|r| r.key.destination)
            .collect();
        assert_eq!(dsts, ["10.0.0.1", "10.0.0.4", "10.0.0.5"]);
        // The count is known after a reopen too.
        drop(s);
        let mut s = Store::open_bounded(&db.url(), 3).unwrap();
        let w = s.record(&agg(&[conn_at("allow", "10.0.0.6", 70)])).unwrap();
        assert_eq!(w.evicted, 1);
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_sentence() {
        let db = TempDb::new("schema");
        drop(Store::open(&db.url()).unwrap());
        let path = db.0.join("store.db");
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let e = Store::open(&db.url()).err().expect("refused").to_string();
        assert_eq!(
            e,
            format!(
                "--store sqlite:{}: its schema version is 99, newer than this tiergate knows (1); use a newer tiergate or another store",
                path.display()
            )
        );
    }

    #[test]
    fn an_unwritable_place_is_a_clear_error() {
        let e = Store::open("sqlite:/nonexistent/dir/store.db")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.starts_with(
                "--store sqlite:/nonexistent/dir/store.db: cannot open the database file"
            ),
            "{e}"
        );
    }
}
