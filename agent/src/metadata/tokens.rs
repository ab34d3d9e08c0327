//! AWS session tokens the proxy saw issued, and to whom: a token obtained
//! by one workload is not accepted from another (a leaked token is not a
//! key to the node's role). Only a digest of each token is kept, so the
//! agent's memory holds nothing a dump could replay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Tokens remembered at once; beyond it the soonest to expire goes first
/// (its workload gets 401 and fetches a new one, as the SDKs do).
pub const MAX_TOKENS: usize = 65_536;
/// The longest lifetime IMDS grants (6 hours).
pub const MAX_TTL: Duration = Duration::from_secs(21_600);

/// What a presented token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// Issued through the proxy to this workload, not expired.
    Ours,
    /// Issued through the proxy to another workload.
    OtherWorkload,
    /// Not issued through the proxy, or expired.
    Unknown,
}

struct Issued {
    cgroup: u64,
    expires: Instant,
}

/// The tokens issued through the proxy.
pub struct TokenBook {
    issued: Mutex<HashMap<[u8; 32], Issued>>,
    max: usize,
}

impl Default for TokenBook {
    fn default() -> Self {
        Self::with_capacity(MAX_TOKENS)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenBook {
    pub fn with_capacity(max: usize) -> Self {
        Self {
            issued: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Records `token` as issued to `cgroup` for `ttl` (capped at 6 h).
    pub fn record(&self, token: &str, cgroup: u64, ttl: Duration) {
        let now = Instant::now();
        let mut issued = self.issued.lock().expect("token lock");
        if issued.len() >= self.max {
            issued.retain(|_, i| i.expires > now);
        }
        if issued.len() >= self.max
            && let Some(k) = issued
                .iter()
                .min_by_key(|(_, i)| i.expires)
                .map(|(k, _)| *k)
        {
            issued.remove(&k);
        }
        issued.insert(
            digest(token),
            Issued {
                cgroup,
                expires: now + ttl.min(MAX_TTL),
            },
        );
    }

    /// Who `token` was issued to, as seen from `cgroup`.
    pub fn check(&self, token: &str, cgroup: u64) -> TokenCheck {
        let issued = self.issued.lock().expect("token lock");
        match issued.get(&digest(token)) {
            Some(i) if i.expires <= Instant::now() => TokenCheck::Unknown,
            Some(i) if i.cgroup == cgroup => TokenCheck::Ours,
            Some(_) => TokenCheck::OtherWorkload,
            None => TokenCheck::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.issued.lock().expect("token lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the tokens of workloads `live` no longer names.
    pub fn retain_cgroups(&self, live: impl Fn(u64) -> bool) {
        let now = Instant::now();
        self.issued
            .lock()
            .expect("token lock")
            .retain(|_, i| i.expires > now && live(i.cgroup));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_only_for_the_workload_it_was_issued_to() {
        let b = TokenBook::default();
        b.record("tok-a", 1, Duration::from_secs(60));
        assert_eq!(b.check("tok-a", 1), TokenCheck::Ours);
        assert_eq!(b.check("tok-a", 2), TokenCheck::OtherWorkload);
        assert_eq!(b.check("tok-b", 1), TokenCheck::Unknown);
    }

    #[test]
    fn expired_tokens_are_unknown() {
        let b = TokenBook::default();
        b.record("t", 1, Duration::ZERO);
        assert_eq!(b.check("t", 1), TokenCheck::Unknown);
    }

    #[test]
    fn the_book_is_bounded_and_keeps_the_longest_lived() {
        let b = TokenBook::with_capacity(3);
        for (i, secs) in [(0, 10), (1, 20), (2, 30), (3, 40)] {
            b.record(&format!("t{i}"), 1, Duration::from_secs(secs));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.check("t0", 1),
            TokenCheck::Unknown,
            "soonest to expire went"
        );
        assert_eq!(b.check("t3", 1), TokenCheck::Ours);
    }

    #[test]
    fn tokens_of_gone_workloads_are_forgotten() {
        let b = TokenBook::default();
        b.record("a", 1, Duration::from_secs(60));
        b.record("b", 2, Duration::from_secs(60));
        b.retain_cgroups(|c| c == 2);
        assert_eq!(b.check("a", 1), TokenCheck::Unknown);
        assert_eq!(b.check("b", 2), TokenCheck::Ours);
    }
}
