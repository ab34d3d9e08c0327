//! The aggregate's maps, looked up with keys borrowed from the record: a
//! key is copied into the map only the first time it is seen, not for
//! every record.
//!
//! Each borrowed key hashes exactly as the owned key it stands for (the
//! same fields in the same order; `str` hashes as `String` does) and is
//! compared with it field by field (hashbrown's `Equivalent`): two records
//! meet in one entry only when every field is equal, and a hash collision
//! is only a collision.

use std::hash::Hash;

use hashbrown::Equivalent;

use super::observe::{ObservationKey, WorkloadRef};

/// The aggregate's maps: hashbrown's, for lookups by borrowed keys, with
/// its default hasher (foldhash, seeded at random per map; a quarter of
/// SipHash's cost here). What a workload could do with collisions is
/// slow the store's thread, whose backlog is bounded and counted; the
/// delivery to the sinks does not wait for it.
pub type Map<K, V> = hashbrown::HashMap<K, V>;

/// [`ObservationKey`], borrowed.
#[derive(Debug, Hash)]
pub(super) struct KeyRef<'a> {
    pub identity: &'a str,
    pub tier: &'a str,
    pub policy_version: &'a str,
    pub destination: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub verdict: &'a str,
    pub rule_uid: &'a str,
}

impl<'a> KeyRef<'a> {
    pub fn of(k: &'a ObservationKey) -> Self {
        KeyRef {
            identity: &k.identity,
            tier: &k.tier,
            policy_version: &k.policy_version,
            destination: &k.destination,
            port: k.port,
            protocol: &k.protocol,
            verdict: &k.verdict,
            rule_uid: &k.rule_uid,
        }
    }
}

impl Equivalent<ObservationKey> for KeyRef<'_> {
    fn equivalent(&self, k: &ObservationKey) -> bool {
        self.port == k.port
            && self.identity == k.identity
            && self.tier == k.tier
            && self.policy_version == k.policy_version
            && self.destination == k.destination
            && self.protocol == k.protocol
            && self.verdict == k.verdict
            && self.rule_uid == k.rule_uid
    }
}

impl From<&KeyRef<'_>> for ObservationKey {
    fn from(k: &KeyRef<'_>) -> Self {
        ObservationKey {
            identity: k.identity.to_string(),
            tier: k.tier.to_string(),
            policy_version: k.policy_version.to_string(),
            destination: k.destination.to_string(),
            port: k.port,
            protocol: k.protocol.to_string(),
            verdict: k.verdict.to_string(),
            rule_uid: k.rule_uid.to_string(),
        }
    }
}

/// `(String, String)`, borrowed: (identity class, node).
#[derive(Debug, Hash)]
pub(super) struct Pair<'a>(pub &'a str, pub &'a str);

impl Equivalent<(String, String)> for Pair<'_> {
    fn equivalent(&self, k: &(String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1
    }
}

impl From<&Pair<'_>> for (String, String) {
    fn from(k: &Pair<'_>) -> Self {
        (k.0.to_string(), k.1.to_string())
    }
}

/// `(String, String, String)`, borrowed: (identity class, node, tier).
#[derive(Debug, Hash)]
pub(super) struct Triple<'a>(pub &'a str, pub &'a str, pub &'a str);

impl Equivalent<(String, String, String)> for Triple<'_> {
    fn equivalent(&self, k: &(String, String, String)) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

impl From<&Triple<'_>> for (String, String, String) {
    fn from(k: &Triple<'_>) -> Self {
        (k.0.to_string(), k.1.to_string(), k.2.to_string())
    }
}

/// The workload fields an identity class is made of, owned.
type ClassFields = [Option<String>; 5];

/// [`ClassFields`], borrowed.
#[derive(Debug, Hash)]
struct FieldsRef<'a>([Option<&'a str>; 5]);

impl Equivalent<ClassFields> for FieldsRef<'_> {
    fn equivalent(&self, k: &ClassFields) -> bool {
        self.0.iter().zip(k).all(|(a, b)| *a == b.as_deref())
    }
}

impl From<&FieldsRef<'_>> for ClassFields {
    fn from(k: &FieldsRef<'_>) -> Self {
        k.0.map(|f| f.map(str::to_string))
    }
}

/// Workloads whose classes an aggregate remembers, at most; past that it
/// starts again (a class is cheap to work out again, only not for every
/// record).
const MAX_CLASSES: usize = 4096;

/// The identity classes of the workloads seen: worked out (patterns of
/// cgroup paths and unit names) once per workload, not for every record.
#[derive(Debug, Default)]
pub(super) struct Classes(Map<ClassFields, String>);

impl Classes {
    /// The identity class of `w`, as [`WorkloadRef::class`] makes it.
    pub fn class(&mut self, w: &WorkloadRef<'_>) -> &str {
        let fields = FieldsRef(w.fields());
        if self.0.len() >= MAX_CLASSES && !self.0.contains_key(&fields) {
            self.0.clear();
        }
        self.0.entry_ref(&fields).or_insert_with(|| w.class())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::hash::BuildHasher;

    use super::*;

    fn owned() -> ObservationKey {
        ObservationKey {
            identity: "cgroup:/a/*".into(),
            tier: "t0".into(),
            policy_version: "sha256:ab".into(),
            destination: "10.0.0.1".into(),
            port: 443,
            protocol: "tcp".into(),
            verdict: "allow".into(),
            rule_uid: "r-1".into(),
        }
    }

    #[test]
    fn borrowed_keys_hash_as_the_owned_keys_they_stand_for() {
        let h = hashbrown::DefaultHashBuilder::default();
        let k = owned();
        assert_eq!(h.hash_one(KeyRef::of(&k)), h.hash_one(&k));
        assert_eq!(ObservationKey::from(&KeyRef::of(&k)), k);
        let pair = ("id".to_string(), "node".to_string());
        assert_eq!(h.hash_one(Pair("id", "node")), h.hash_one(&pair));
        let triple = ("id".to_string(), "node".to_string(), "t".to_string());
        assert_eq!(h.hash_one(Triple("id", "node", "t")), h.hash_one(&triple));
        let fields: ClassFields = [None, Some("ns".into()), None, None, Some("/p".into())];
        let borrowed = FieldsRef([None, Some("ns"), None, None, Some("/p")]);
        assert_eq!(h.hash_one(&borrowed), h.hash_one(&fields));
        assert_eq!(ClassFields::from(&borrowed), fields);
    }

    /// Every field counts, and fields do not run into each other.
    #[test]
    fn a_key_that_differs_in_any_field_is_another_key() {
        let k = owned();
        let r = KeyRef::of(&k);
        assert!(r.equivalent(&k));
        for (i, mut other) in (0..8).map(|i| (i, owned())) {
            match i {
                0 => other.identity.push('x'),
                1 => other.tier.push('x'),
                2 => other.policy_version.push('x'),
                3 => other.destination.push('x'),
                4 => other.port += 1,
                5 => other.protocol.push('x'),
                6 => other.verdict.push('x'),
                _ => other.rule_uid.push('x'),
            }
            assert!(!r.equivalent(&other), "field {i}");
        }
        let pair = ("ab".to_string(), "c".to_string());
        assert!(!Pair("a", "bc").equivalent(&pair));
        let fields: ClassFields = [None, Some(String::new()), None, None, None];
        assert!(!FieldsRef([None; 5]).equivalent(&fields));
    }

    /// Collisions are resolved by comparing: with a hasher that gives every
    /// key the same hash, distinct keys still get entries of their own.
    #[test]
    fn hash_collisions_do_not_merge_keys() {
        #[derive(Default)]
        struct Same;
        impl std::hash::Hasher for Same {
            fn finish(&self) -> u64 {
                7
            }
            fn write(&mut self, _: &[u8]) {}
        }
        let mut m: hashbrown::HashMap<ObservationKey, u64, std::hash::BuildHasherDefault<Same>> =
            Default::default();
        let a = owned();
        let mut b = owned();
        b.destination = "10.0.0.2".into();
        for k in [&a, &b, &a] {
            *m.entry_ref(&KeyRef::of(k)).or_insert(0) += 1;
        }
        assert_eq!(m.len(), 2);
        assert_eq!((m[&a], m[&b]), (2, 1));
    }

    #[test]
    fn classes_are_worked_out_once_per_workload_and_stay_bounded() {
        let w =
            |path: &str| WorkloadRef([None, None, None, None, Some(Cow::Owned(path.to_string()))]);
        let mut c = Classes::default();
        assert_eq!(
            c.class(&w("/u/session-1.scope")),
            "cgroup:/u/session-*.scope"
        );
        assert_eq!(
            c.class(&w("/u/session-2.scope")),
            "cgroup:/u/session-*.scope"
        );
        assert_eq!(
            c.class(&w("/u/session-1.scope")),
            "cgroup:/u/session-*.scope"
        );
        assert_eq!(c.len(), 2);
        let k8s = WorkloadRef([
            None,
            Some(Cow::Borrowed("agents")),
            Some(Cow::Borrowed("retriever")),
            None,
            Some(Cow::Borrowed("/u/session-1.scope")),
        ]);
        assert_eq!(c.class(&k8s), "k8s:agents/retriever");
        for i in 0..MAX_CLASSES + 10 {
            c.class(&w(&format!("/p/{i}")));
        }
        assert!(c.len() <= MAX_CLASSES);
    }
}
