//! The routing decisions of a router over scopes, made once for both faces: which scope serves
//! a key ([`Routing`]), how a batch splits ([`Part`]) and how its parts add up ([`Tally`]).

use std::sync::Arc;

use super::Partition;
use crate::error::{Error, Result};
use crate::key::LEASE_PREFIX;

/// The routing decisions of a router over scopes, made once for both faces
/// ([`PerScope`](super::PerScope) and the async face's router, `aio/scopes.rs`): which scope
/// serves a key, and how a batch splits.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    partition: Arc<dyn Partition>,
    n: usize,
    /// [`Partition::leases_follow_keys`], asked once.
    leases_follow: bool,
    /// [`Partition::keys_move`], asked once.
    keys_move: bool,
}

impl Routing {
    /// Keys placed by `partition` over `n` scopes.
    pub(crate) fn new(partition: Arc<dyn Partition>, n: usize) -> Self {
        let leases_follow = partition.leases_follow_keys();
        let keys_move = partition.keys_move();
        Routing {
            partition,
            n,
            leases_follow,
            keys_move,
        }
    }

    /// Whether a key can change scope while servers keep it ([`Partition::keys_move`]).
    pub(crate) fn keys_move(&self) -> bool {
        self.keys_move
    }

    /// The key whose place `lease`, the name of a `get_or_set` lease, takes: the key it guards
    /// when leases follow their keys. Asked only by the lease operations (`take_lease`,
    /// `release_lease`, `extend_lease`, the lease of `set_if_lease`), which say by the call
    /// that their key is a lease: any other key is placed by itself, whatever its text (a user
    /// key beginning with [`LEASE_PREFIX`] too, as pymemcache places it).
    fn lease_placed_as<'k>(&self, lease: &'k str) -> &'k str {
        match lease.strip_prefix(LEASE_PREFIX) {
            Some(guarded) if self.leases_follow => guarded,
            _ => lease,
        }
    }

    /// The scope that serves `key`, a user key (a partition's answer past the last scope is
    /// the last).
    pub(crate) fn index(&self, key: &str) -> usize {
        self.partition.scope_of(key).min(self.n.saturating_sub(1))
    }

    /// The scope that serves `lease` in a lease operation ([`Routing::lease_placed_as`]).
    pub(crate) fn lease_index(&self, lease: &str) -> usize {
        self.index(self.lease_placed_as(lease))
    }

    /// Where a store fenced by a lease goes (`set_if_lease`): the scope of `key`, and whether
    /// `lease` is in that scope too (asked in one call, as a batch). Only then can the scope
    /// fence the store; otherwise it is a plain `set` there, unfenced (as the `Backend`
    /// trait's default: the leader's clock margin is the only guard).
    pub(crate) fn fenced(&self, key: &str, lease: &str) -> (usize, bool) {
        let last = self.n.saturating_sub(1);
        let both = self
            .partition
            .scopes_of(&[key, self.lease_placed_as(lease)]);
        match both.as_slice() {
            &[k, l] => (k.min(last), k.min(last) == l.min(last)),
            _ => (self.index(key), false),
        }
    }

    /// The scope that serves `key` asked in the middle of a call
    /// ([`PerScope::follow_moves`](super::PerScope::follow_moves)), which must not count as a
    /// new call's start ([`Partition::scope_within_call`]).
    pub(crate) fn index_within_call(&self, key: &str) -> usize {
        self.partition
            .scope_within_call(key)
            .min(self.n.saturating_sub(1))
    }

    /// A batch split by scope: one part per scope that has items, in scope order.
    /// The batch's scopes are asked in one call ([`Partition::scopes_of`]), so that a partition
    /// that bounds a call by when it started (a Redis Cluster's first slot-map wait) sees it once.
    pub(crate) fn parts<T: Clone>(&self, items: &[T], key: impl Fn(&T) -> &str) -> Vec<Part<T>> {
        let mut groups = vec![Vec::new(); self.n];
        let keys: Vec<&str> = items.iter().map(key).collect();
        for (i, s) in self.partition.scopes_of(&keys).into_iter().enumerate() {
            groups[s.min(self.n.saturating_sub(1))].push(i);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, at)| !at.is_empty())
            .map(|(scope, at)| Part {
                scope,
                items: at.iter().map(|&i| items[i].clone()).collect(),
                at,
            })
            .collect()
    }
}

/// One scope's part of a batch ([`Routing::parts`]).
#[derive(Debug)]
pub(crate) struct Part<T> {
    /// The scope.
    pub(crate) scope: usize,
    /// The items' positions in the batch.
    pub(crate) at: Vec<usize>,
    /// The items, in batch order.
    pub(crate) items: Vec<T>,
}

impl<T> Part<T> {
    /// The part's keys.
    pub(crate) fn keys<'s>(&'s self, key: impl Fn(&'s T) -> &'s str) -> Vec<&'s str> {
        self.items.iter().map(key).collect()
    }

    /// Puts the part's answers (one per item, in order) at their places in the batch's.
    pub(crate) fn place<V>(&self, answers: Vec<V>, out: &mut [V]) {
        for (&i, v) in self.at.iter().zip(answers) {
            out[i] = v;
        }
    }
}

/// A batch's outcome over its scopes, the same for both faces: every scope's part is tried
/// (one failing does not skip the others); the sum of what they did, or the first error.
#[derive(Debug)]
pub(crate) struct Tally<T> {
    done: T,
    first: Option<Error>,
}

impl<T: Default + std::ops::AddAssign> Tally<T> {
    pub(crate) fn new() -> Self {
        Tally {
            done: T::default(),
            first: None,
        }
    }

    /// One scope's part.
    pub(crate) fn add(&mut self, r: Result<T>) {
        match r {
            Ok(v) => self.done += v,
            Err(e) => {
                self.first.get_or_insert(e);
            }
        }
    }

    /// The sum, or the first error.
    pub(crate) fn finish(self) -> Result<T> {
        self.first.map_or(Ok(self.done), Err)
    }
}

/// `()` as a count of nothing, for the batches whose parts return nothing ([`Tally`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Nothing;

impl std::ops::AddAssign for Nothing {
    fn add_assign(&mut self, _: Nothing) {}
}
