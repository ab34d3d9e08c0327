//! The observation store's reading of the records an authenticated agent
//! sends (any bytes, one record a line): each line reads the same with the
//! store's scanner as with serde_json alone (the scanner reads it as
//! serde_json does or leaves it to serde_json); a batch folds into the
//! aggregate as its records do one by one (records of a shape seen before
//! are compared rather than read, runs of one shape folded in together);
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate_collector::store::{Aggregate, observe, observe_with_serde_json};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let mut one_by_one = Aggregate::default();
    let mut unreadable = 0;
    for line in &lines {
        let read = observe(line);
        assert_eq!(
            read,
            observe_with_serde_json(line),
            "{}",
            String::from_utf8_lossy(line)
        );
        match read {
            Ok(Some(update)) => one_by_one.add(update),
            Ok(None) => {}
            Err(_) => unreadable += 1,
        }
    }
    let mut batch = Aggregate::default();
    let mut batch_unreadable = 0;
    batch.add_records(&lines, |_| batch_unreadable += 1);
    assert_eq!(batch_unreadable, unreadable);
    assert_eq!(batch.updates, one_by_one.updates);
    assert_eq!(batch.observations(0), one_by_one.observations(0));
    assert_eq!(batch.identities(), one_by_one.identities());
    assert_eq!(batch.rules(), one_by_one.rules());
    assert_eq!(batch.policy_versions(), one_by_one.policy_versions());
});
