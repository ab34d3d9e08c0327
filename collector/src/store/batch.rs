//! A batch of records folded in at once (the store's thread gets the
//! records an agent's batch delivered).
//!
//! Agents send the same record again and again (one workload trying one
//! destination), each with its own seq, uid, time and pid. The batch keeps
//! the shapes of the last few records the scanner read (see `shape.rs`); a
//! record of one of those shapes is compared with the record that made it
//! instead of being read, and takes that record's update with its own time
//! and count. Consecutive records of one shape are folded in as one run:
//! the aggregate changes as it would one record at a time, in order.

use super::Aggregate;
use super::Seen;
use super::observe::{ObserveError, Observed, TrafficRef, Update, observe_shaped};
use super::shape::{Shape, Values};

/// Shapes a batch compares records with, at most (the most recent ones).
const SHAPES: usize = 4;

/// Records of one shape that follow each other: the first one's update,
/// with the others' sightings added.
pub(super) struct Run<'a> {
    pub traffic: TrafficRef<'a>,
    pub updates: u64,
    /// The last attempt of the run (0: none).
    pub last_attempt_ms: u64,
}

impl<'a> Run<'a> {
    pub fn new(traffic: TrafficRef<'a>) -> Self {
        let last_attempt_ms = if traffic.attempts > 0 {
            traffic.seen.last_ms
        } else {
            0
        };
        Run {
            traffic,
            updates: 1,
            last_attempt_ms,
        }
    }

    /// The first record of a run of `like`'s shape: `like`'s update with
    /// its own `time` and `count`.
    fn like(like: &TrafficRef<'a>, time: u64, count: u64) -> Self {
        let mut traffic = like.clone();
        traffic.seen = Seen::at(time, count);
        traffic.attempts = if traffic.dns { 0 } else { count };
        Run::new(traffic)
    }

    /// Another record of the run: the same but for `time` and `count`.
    fn add(&mut self, time: u64, count: u64) {
        self.updates += 1;
        self.traffic.seen.merge(Seen::at(time, count));
        if !self.traffic.dns {
            self.traffic.attempts += count;
            if count > 0 {
                self.last_attempt_ms = self.last_attempt_ms.max(time);
            }
        }
    }
}

/// A record the scanner read, whose shape later records are compared with.
struct Template<'a> {
    line: &'a [u8],
    shape: Shape,
    traffic: TrafficRef<'a>,
}

impl Aggregate {
    /// Folds records in, as [`Aggregate::add_record`] on each in turn
    /// would; `unreadable` is told why of each record that is not
    /// readable.
    pub fn add_records<L: AsRef<[u8]>>(
        &mut self,
        lines: &[L],
        mut unreadable: impl FnMut(ObserveError),
    ) {
        let mut spare = std::mem::take(&mut self.shapes);
        let mut templates: Vec<Template<'_>> = Vec::with_capacity(SHAPES);
        // The run being made, and the template of its shape.
        let mut run: Option<(usize, Run<'_>)> = None;
        for line in lines {
            let line = line.as_ref();
            let matched = templates.iter().enumerate().find_map(|(j, t)| {
                match t.shape.matches(t.line, line)? {
                    Values {
                        time: Some(time),
                        count,
                    } => Some((j, time, count.unwrap_or(1))),
                    Values { time: None, .. } => None,
                }
            });
            if let Some((j, time, count)) = matched {
                match &mut run {
                    Some((k, r)) if *k == j => r.add(time, count),
                    _ => {
                        if let Some((_, r)) = run.take() {
                            self.fold(r);
                        }
                        run = Some((j, Run::like(&templates[j].traffic, time, count)));
                    }
                }
                continue;
            }
            if let Some((_, r)) = run.take() {
                self.fold(r);
            }
            // The oldest template makes room (its buffer is reused).
            if templates.len() == SHAPES {
                spare.push(templates.remove(0).shape);
            }
            let mut shape = spare.pop().unwrap_or_default();
            match observe_shaped(line, &mut shape) {
                Ok(Some(Observed::Traffic(t))) if shape.valid => {
                    templates.push(Template {
                        line,
                        shape,
                        traffic: t.clone(),
                    });
                    run = Some((templates.len() - 1, Run::new(t)));
                    continue;
                }
                Ok(Some(Observed::Traffic(t))) => self.fold(Run::new(t)),
                Ok(Some(Observed::Policy(p))) => self.add(Update::Policy(p)),
                Ok(None) => {}
                Err(e) => unreadable(e),
            }
            spare.push(shape);
        }
        if let Some((_, r)) = run {
            self.fold(r);
        }
        spare.extend(templates.into_iter().map(|t| t.shape));
        self.shapes = spare;
    }
}
