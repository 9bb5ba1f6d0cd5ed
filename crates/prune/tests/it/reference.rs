//! A reference prune written from the Proxmox Backup Server documentation ("Prune", and
//! `proxmox-backup-client prune`), period by period rather than point by point:
//!
//! "The retention options are processed in the order given above. Each option only covers
//! backups within its time period. The next option does not take care of already covered
//! backups. It will only consider older backups." and, per option, "keep backups for the last
//! N hours/days/...; if there is more than one backup for a single period, only the latest is
//! kept". Protected snapshots are never pruned and are not counted; no keep option above 0
//! keeps everything.
//!
//! So for each option: group the points no earlier option decided (and not protected) by their
//! period; leave out the periods that already hold a kept point (covered); of the N newest
//! remaining periods keep each one's newest point and drop the others (they are "covered"
//! by this option: later options do not take care of them).

use std::collections::HashSet;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use sendense_prune::{Mark, Point, Rule};
use sendense_types::Retention;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Kept(Rule),
    Dropped,
}

/// `(id, mark)` of every point, newest first (ties: greater id first).
pub(crate) fn reference_prune(
    points: &[Point<u32>],
    retention: &Retention,
    tz: &TimeZone,
) -> Vec<(u32, Mark)> {
    let mut sorted: Vec<&Point<u32>> = points.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse((p.time, p.id)));
    let any = [
        retention.keep_last,
        retention.keep_hourly,
        retention.keep_daily,
        retention.keep_weekly,
        retention.keep_monthly,
        retention.keep_yearly,
    ]
    .iter()
    .any(|n| n.is_some_and(|n| n > 0));
    if !any {
        return sorted
            .iter()
            .map(|p| {
                (
                    p.id,
                    if p.protected {
                        Mark::Protected
                    } else {
                        Mark::KeepAll
                    },
                )
            })
            .collect();
    }
    let civil: Vec<DateTime> = sorted.iter().map(|p| tz.to_datetime(p.time)).collect();
    let mut state = vec![State::Open; sorted.len()];
    for rule in Rule::ALL {
        let Some(n) = rule.count(retention) else {
            continue;
        };
        let label = |i: usize| label(rule, i, &civil[i]);
        let covered: HashSet<String> = (0..sorted.len())
            .filter(|&i| matches!(state[i], State::Kept(_)))
            .map(label)
            .collect();
        // The open periods, newest first, each with its open points newest first.
        let mut periods: Vec<(String, Vec<usize>)> = Vec::new();
        for i in 0..sorted.len() {
            if state[i] != State::Open || sorted[i].protected {
                continue;
            }
            let l = label(i);
            if covered.contains(&l) {
                continue;
            }
            match periods.iter_mut().find(|(p, _)| *p == l) {
                Some((_, members)) => members.push(i),
                None => periods.push((l, vec![i])),
            }
        }
        for (_, members) in periods.iter().take(n as usize) {
            state[members[0]] = State::Kept(rule);
            for &older in &members[1..] {
                state[older] = State::Dropped;
            }
        }
    }
    sorted
        .iter()
        .zip(state)
        .map(|(p, s)| {
            let mark = match s {
                _ if p.protected => Mark::Protected,
                State::Kept(rule) => Mark::Keep(rule),
                State::Open | State::Dropped => Mark::Remove,
            };
            (p.id, mark)
        })
        .collect()
}

/// The period as PBS formats it (`strftime`): `%Y/%m/%d/%H`, `%Y/%m/%d`, `%G/%V`, `%Y/%m`,
/// `%Y`; `keep_last`: the point itself.
fn label(rule: Rule, index: usize, at: &DateTime) -> String {
    match rule {
        Rule::Last => format!("#{index}"),
        Rule::Hourly => at.strftime("%Y/%m/%d/%H").to_string(),
        Rule::Daily => at.strftime("%Y/%m/%d").to_string(),
        Rule::Weekly => at.strftime("%G/%V").to_string(),
        Rule::Monthly => at.strftime("%Y/%m").to_string(),
        Rule::Yearly => at.strftime("%Y").to_string(),
    }
}
