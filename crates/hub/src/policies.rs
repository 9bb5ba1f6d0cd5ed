//! Policies: which VMs a policy's `vms` patterns name, resolved against an inventory at each
//! run.
//!
//! A pattern with a `/` is an inventory path (`dc1/vm/web01`, `dc1/vm/prod/*`), matched
//! against each VM's path one `/`-separated segment at a time: `*` matches any run of
//! characters within a segment, `?` one character, and a segment `**` any number of segments
//! (`dc1/**/db*`). A pattern without `/` is a name glob (`db*`, `web0?`), matched against VM
//! names, where `*` matches any run. Matching is case-sensitive (vCenter names are); leading
//! and trailing `/` are ignored. A pattern that matches nothing is reported back, not an error:
//! the inventory changes, and the run goes on with the VMs that exist.
//!
//! Cost: exact paths and names are looked up in an index; each glob scans the inventory once,
//! O(pattern x name) per VM at worst.

use std::collections::HashMap;

use sendense_types::jobs::InventoryVm;

/// The VMs a policy's patterns name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The VMs, each once: in the order of the first pattern naming them, then inventory order.
    pub vms: Vec<InventoryVm>,
    /// The patterns that matched no VM, in the policy's order.
    pub unmatched: Vec<String>,
}

/// Resolves `patterns` (a policy's `vms`) against `inventory`.
#[must_use]
pub fn resolve_vms(patterns: &[String], inventory: &[InventoryVm]) -> Resolution {
    let mut by_path: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, vm) in inventory.iter().enumerate() {
        by_path.entry(trim_slashes(&vm.path)).or_default().push(i);
        by_name.entry(vm.name.as_str()).or_default().push(i);
    }
    let mut taken = vec![false; inventory.len()];
    let mut out = Resolution::default();
    for pattern in patterns {
        let pattern_glob = Pattern::new(pattern);
        let matches: Vec<usize> = match &pattern_glob {
            Pattern::ExactPath(p) => by_path.get(p).cloned().unwrap_or_default(),
            Pattern::ExactName(n) => by_name.get(n).cloned().unwrap_or_default(),
            Pattern::Glob { .. } => inventory
                .iter()
                .enumerate()
                .filter(|(_, vm)| pattern_glob.matches(vm))
                .map(|(i, _)| i)
                .collect(),
        };
        if matches.is_empty() {
            out.unmatched.push(pattern.clone());
        }
        for i in matches {
            if let (Some(seen), Some(vm)) = (taken.get_mut(i), inventory.get(i))
                && !*seen
            {
                *seen = true;
                out.vms.push(vm.clone());
            }
        }
    }
    out
}

/// Whether `pattern` (a path or name glob, see the module documentation) names `vm`.
#[must_use]
pub fn pattern_matches(pattern: &str, vm: &InventoryVm) -> bool {
    Pattern::new(pattern).matches(vm)
}

/// A pattern, classified once.
#[derive(Debug)]
enum Pattern<'a> {
    /// A path without wildcards.
    ExactPath(&'a str),
    /// A name without wildcards.
    ExactName(&'a str),
    /// Anything with `*` or `?`.
    Glob {
        /// Matched against the path (the pattern has a `/`), else against the name.
        path: bool,
        /// The pattern's segments (one for a name glob), as characters.
        segments: Vec<Vec<char>>,
    },
}

impl<'a> Pattern<'a> {
    fn new(pattern: &'a str) -> Self {
        let path = pattern.contains('/');
        let glob = pattern.contains(['*', '?']);
        match (path, glob) {
            (true, false) => Self::ExactPath(trim_slashes(pattern)),
            (false, false) => Self::ExactName(pattern),
            (true, true) => Self::Glob {
                path,
                segments: trim_slashes(pattern)
                    .split('/')
                    .map(|s| s.chars().collect())
                    .collect(),
            },
            (false, true) => Self::Glob {
                path,
                segments: vec![pattern.chars().collect()],
            },
        }
    }

    fn matches(&self, vm: &InventoryVm) -> bool {
        match self {
            Self::ExactPath(p) => trim_slashes(&vm.path) == *p,
            Self::ExactName(n) => vm.name == *n,
            Self::Glob {
                path: false,
                segments,
            } => {
                let name: Vec<char> = vm.name.chars().collect();
                segments.first().is_some_and(|p| wildcard(p, &name))
            }
            Self::Glob {
                path: true,
                segments,
            } => {
                let path: Vec<Vec<char>> = trim_slashes(&vm.path)
                    .split('/')
                    .map(|s| s.chars().collect())
                    .collect();
                segments_match(segments, &path)
            }
        }
    }
}

fn trim_slashes(s: &str) -> &str {
    s.trim_matches('/')
}

/// `*` (any run) and `?` (one character) glob matching; greedy with one backtrack point, so
/// O(pattern x text) at worst and linear in the common cases.
fn wildcard(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry after it.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Path segments against pattern segments, where a `**` segment spans any number of segments:
/// a table of "pattern from i matches path from j", filled from the ends.
fn segments_match(pattern: &[Vec<char>], path: &[Vec<char>]) -> bool {
    let (np, ns) = (pattern.len(), path.len());
    let width = ns + 1;
    let mut table = vec![false; (np + 1) * width];
    if let Some(end) = table.get_mut(np * width + ns) {
        *end = true;
    }
    for i in (0..np).rev() {
        for j in (0..=ns).rev() {
            let at = |i: usize, j: usize| table.get(i * width + j).copied().unwrap_or(false);
            let value = match pattern.get(i) {
                Some(seg) if seg.as_slice() == ['*', '*'] => {
                    at(i + 1, j) || (j < ns && at(i, j + 1))
                }
                Some(seg) => path
                    .get(j)
                    .is_some_and(|s| wildcard(seg, s) && at(i + 1, j + 1)),
                None => false,
            };
            if let Some(cell) = table.get_mut(i * width + j) {
                *cell = value;
            }
        }
    }
    table.first().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, path: &str) -> InventoryVm {
        InventoryVm {
            name: name.to_owned(),
            path: path.to_owned(),
        }
    }

    fn inventory() -> Vec<InventoryVm> {
        vec![
            vm("web01", "dc1/vm/web01"),
            vm("web02", "dc1/vm/web02"),
            vm("db1", "dc1/vm/prod/db1"),
            vm("db2", "dc2/vm/db2"),
            vm("Db3", "dc2/vm/legacy/Db3"),
        ]
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.vms.iter().map(|v| v.name.as_str()).collect()
    }

    fn patterns(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn design_example_resolves_a_path_and_a_name_glob() {
        let r = resolve_vms(&patterns(&["dc1/vm/web01", "db*"]), &inventory());

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (vec!["web01", "db1", "db2"], vec![])
        );
    }

    #[test]
    fn unmatched_patterns_are_reported_and_the_rest_resolve() {
        let r = resolve_vms(
            &patterns(&["dc9/vm/nothing", "web0?", "zz*", "ghost"]),
            &inventory(),
        );

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (
                vec!["web01", "web02"],
                patterns(&["dc9/vm/nothing", "zz*", "ghost"])
            )
        );
    }

    #[test]
    fn vms_named_by_several_patterns_are_listed_once_in_first_pattern_order() {
        let r = resolve_vms(&patterns(&["db2", "*", "web01"]), &inventory());

        assert_eq!(
            (names(&r), r.unmatched.clone()),
            (vec!["db2", "web01", "web02", "db1", "Db3"], vec![])
        );
    }

    #[test]
    fn path_star_stays_within_one_segment_and_double_star_spans_segments() {
        let inv = inventory();
        let r_star = resolve_vms(&patterns(&["dc1/vm/*"]), &inv);
        let r_deep = resolve_vms(&patterns(&["dc1/vm/*/*"]), &inv);
        let r_any = resolve_vms(&patterns(&["dc2/**"]), &inv);
        let r_mid = resolve_vms(&patterns(&["**/db?"]), &inv);

        assert_eq!(
            (names(&r_star), names(&r_deep), names(&r_any), names(&r_mid)),
            (
                vec!["web01", "web02"],
                vec!["db1"],
                vec!["db2", "Db3"],
                vec!["db1", "db2"]
            )
        );
    }

    #[test]
    fn matching_is_case_sensitive_and_ignores_outer_slashes() {
        let inv = inventory();

        assert_eq!(
            (
                names(&resolve_vms(&patterns(&["db3", "D*"]), &inv)),
                names(&resolve_vms(&patterns(&["/dc1/vm/web02/"]), &inv)),
            ),
            (vec!["Db3"], vec!["web02"])
        );
    }

    #[test]
    fn wildcard_handles_backtracking_and_trailing_stars() {
        let m = |p: &str, t: &str| {
            wildcard(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
            )
        };

        assert_eq!(
            [
                m("a*b*c", "aXbYbZc"),
                m("a*b*c", "aXbYbZ"),
                m("*", ""),
                m("?", ""),
                m("**x**", "abxcd"),
                m("wéb?", "wébé"),
                m("", "a"),
            ],
            [true, false, true, false, true, true, false]
        );
    }

    #[test]
    fn empty_inventory_leaves_every_pattern_unmatched() {
        let r = resolve_vms(&patterns(&["a", "b*"]), &[]);

        assert_eq!((r.vms, r.unmatched), (vec![], patterns(&["a", "b*"])));
    }

    #[test]
    fn long_pathological_glob_finishes() {
        let pattern = "*a".repeat(200) + "b";
        let name = "a".repeat(500);

        assert!(!pattern_matches(&pattern, &vm(&name, "dc/vm/x")));
    }
}
