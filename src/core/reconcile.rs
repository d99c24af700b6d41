//! Matching the ledger against Poe's authoritative points history.
//!
//! Poe's history names the bot and the time of each charged request, but nothing links an
//! entry to our request. So each Poe entry is matched to our finished requests for the same
//! model whose time window (start − slack … end + slack) contains it. Requests and entries
//! that could match each other form groups; a group's total is shared among its requests in
//! proportion to their estimates (a lone request simply gets its entry's cost). Each Poe entry
//! is used once. After a full pass, the reconciled total of the matched requests equals the
//! total of the Poe entries matched.

use std::collections::HashMap;

use crate::poe::{HistoryEntry, PoeClient, PoeError};
use crate::store::{LedgerEntry, LedgerState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Poe(#[from] PoeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub requests_reconciled: usize,
    pub poe_entries_used: usize,
    pub points: i64,
    /// The same points by model (for metrics).
    pub by_model: std::collections::BTreeMap<String, i64>,
}

/// Poe keeps 30 days of history; older requests are never reconciled.
const HISTORY_DAYS_US: i64 = 30 * 86_400 * 1_000_000;

fn find(parent: &mut [usize], mut node: usize) -> usize {
    while parent[node] != node {
        parent[node] = parent[parent[node]];
        node = parent[node];
    }
    node
}

/// Shares `total` among `weights` in proportion, as whole points that add up to `total`
/// (largest remainders get the leftover points).
fn share(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i64 = weights.iter().map(|weight| weight.max(&1)).sum();
    let mut shares: Vec<(usize, i64, i64)> = weights
        .iter()
        .enumerate()
        .map(|(index, weight)| {
            let scaled = total as i128 * (*weight).max(1) as i128;
            (
                index,
                (scaled / sum as i128) as i64,
                (scaled % sum as i128) as i64,
            )
        })
        .collect();
    let mut left = total - shares.iter().map(|(_, base, _)| base).sum::<i64>();
    shares.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    for share in shares.iter_mut() {
        if left <= 0 {
            break;
        }
        share.1 += 1;
        left -= 1;
    }
    shares.sort_by_key(|(index, _, _)| *index);
    shares.into_iter().map(|(_, base, _)| base).collect()
}

/// Runs one pass at `now_us`: requests finished before `now_us - settle_us` are considered.
pub async fn reconcile_once(
    poe: &PoeClient,
    store: &Store,
    now_us: i64,
    settle_us: i64,
    slack_us: i64,
) -> Result<ReconcileReport, ReconcileError> {
    // Every unreconciled request takes part in the matching, running ones included, so that a
    // Poe entry is never handed to a finished request when it belongs to one still running;
    // groups with a request not yet ready are left for a later pass.
    let ours: Vec<LedgerEntry> = store
        .ledger_since(now_us - HISTORY_DAYS_US)?
        .into_iter()
        .filter(|entry| entry.reconciled.is_none())
        .collect();
    let ready = |entry: &LedgerEntry| {
        entry.state != LedgerState::Reserved
            && entry
                .finished_us
                .is_some_and(|end| end <= now_us - settle_us)
    };
    if !ours.iter().any(ready) {
        return Ok(ReconcileReport::default());
    }
    if ours.is_empty() {
        return Ok(ReconcileReport::default());
    }
    let since = ours
        .iter()
        .map(|entry| entry.created_us)
        .min()
        .unwrap_or(now_us)
        - slack_us;
    let theirs: Vec<HistoryEntry> = poe
        .points_history_since(since, 100)
        .await?
        .into_iter()
        .filter(|entry| {
            entry.usage_type.as_deref().is_none_or(|kind| kind == "API")
                && entry.cost_points.is_some_and(|points| points > 0)
                && entry.creation_time.is_some()
                && entry.bot_name.is_some()
        })
        .collect();

    // Nodes: ours are 0..n, theirs are n..n+m.
    let n = ours.len();
    let mut parent: Vec<usize> = (0..n + theirs.len()).collect();
    let mut linked = vec![false; theirs.len()];
    for (j, entry) in theirs.iter().enumerate() {
        let (Some(at), Some(bot)) = (entry.creation_time, entry.bot_name.as_deref()) else {
            continue;
        };
        for (i, request) in ours.iter().enumerate() {
            let end = request.finished_us.unwrap_or(now_us);
            if request.model.eq_ignore_ascii_case(bot)
                && at >= request.created_us - slack_us
                && at <= end + slack_us
            {
                let (a, b) = (find(&mut parent, i), find(&mut parent, n + j));
                parent[a] = b;
                linked[j] = true;
            }
        }
    }
    let mut groups: HashMap<usize, (Vec<usize>, Vec<usize>)> = HashMap::new();
    for i in 0..n {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().0.push(i);
    }
    for (j, is_linked) in linked.iter().enumerate() {
        if *is_linked {
            let root = find(&mut parent, n + j);
            groups.entry(root).or_default().1.push(j);
        }
    }

    let mut report = ReconcileReport::default();
    for (requests, entries) in groups.into_values() {
        if requests.is_empty() || entries.is_empty() || !requests.iter().all(|&i| ready(&ours[i])) {
            continue;
        }
        let mut total = 0;
        let mut used = 0;
        for &j in &entries {
            if store.claim_query(&theirs[j].query_id, now_us / 1000)? {
                total += theirs[j].cost_points.unwrap_or(0);
                used += 1;
            }
        }
        if used == 0 {
            continue;
        }
        // A request given back without an estimate (refused, or interrupted before any text)
        // gets almost nothing of a shared total.
        let weights: Vec<i64> = requests
            .iter()
            .map(|&i| match ours[i].state {
                LedgerState::Released => ours[i].estimated.unwrap_or(0),
                _ => ours[i].estimated.unwrap_or(ours[i].reserved),
            })
            .collect();
        for (&i, points) in requests.iter().zip(share(total, &weights)) {
            store.update_ledger(ours[i].id, |entry| entry.reconciled = Some(points))?;
            *report.by_model.entry(ours[i].model.clone()).or_default() += points;
        }
        report.requests_reconciled += requests.len();
        report.poe_entries_used += used;
        report.points += total;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_follow_the_weights() {
        assert_eq!(share(100, &[1, 1, 2]), vec![25, 25, 50]);
        assert_eq!(share(10, &[1, 1, 1]).iter().sum::<i64>(), 10);
        assert_eq!(share(7, &[0, 0]), vec![4, 3]);
        assert_eq!(share(0, &[5]), vec![0]);
    }
}
