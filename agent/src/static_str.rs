//! `&'static str` fields (verdicts, reasons, rcodes: the closed vocabulary
//! of the records) read back from the wire between `tiergate proxy` and the
//! agent. Each distinct spelling is kept once for the process's life; past
//! [`MAX_SPELLINGS`] distinct ones, a new spelling reads as `unknown`, so a
//! misbehaving peer cannot grow the agent's memory.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serializer};

/// A word of the vocabulary. (Spelt as an alias so serde's derive does not
/// take the field for one borrowed from the input.)
pub type Word = &'static str;

/// Distinct spellings kept (the vocabulary has well under a hundred).
pub const MAX_SPELLINGS: usize = 512;

/// Spellings kept, up to a bound.
struct Spellings {
    set: BTreeSet<&'static str>,
    max: usize,
}

impl Spellings {
    const fn new(max: usize) -> Self {
        Self {
            set: BTreeSet::new(),
            max,
        }
    }

    fn get(&mut self, s: &str) -> &'static str {
        if let Some(k) = self.set.get(s) {
            return k;
        }
        if self.set.len() >= self.max {
            return "unknown";
        }
        let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
        self.set.insert(k);
        k
    }
}

static SPELLINGS: Mutex<Spellings> = Mutex::new(Spellings::new(MAX_SPELLINGS));

/// The one `'static` copy of `s`.
pub fn intern(s: &str) -> &'static str {
    SPELLINGS.lock().expect("spellings lock").get(s)
}

pub fn serialize<S: Serializer>(v: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(intern(&s))
}

/// The same for `Option<&'static str>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<&'static str>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        Ok(s.map(|s| intern(&s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_spelling() {
        let a = intern("name-allowed");
        let b = intern(&String::from("name-allowed"));
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn spellings_are_bounded() {
        let mut s = Spellings::new(8);
        for i in 0..20 {
            let _ = s.get(&format!("bounded-{i}"));
        }
        assert_eq!(s.get("bounded-3"), "bounded-3");
        assert_eq!(s.get("past-the-bound"), "unknown");
        assert_eq!(s.set.len(), 8);
    }
}
