//! A bounded, merging list of byte runs ([`Extent`]s).
//!
//! `allocated_extents` may over-approximate ("may be non-zero") but must
//! never miss data. Hostile sparse files can describe millions of isolated
//! grains; once [`MAX_RUNS`] runs exist, later runs are absorbed into the
//! last one (gaps included), which keeps memory bounded and stays correct.

use sendense_io::Extent;

/// Largest number of separate runs kept (64 MiB of runs).
pub(crate) const MAX_RUNS: usize = 1 << 22;

/// Runs in ascending order, adjacent runs merged.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    runs: Vec<Extent>,
}

impl Runs {
    /// Appends a run at or after the end of the previous one.
    pub(crate) fn push(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let full = self.runs.len() >= MAX_RUNS;
        if let Some(last) = self.runs.last_mut() {
            let last_end = last.end();
            if offset <= last_end || full {
                let end = offset.saturating_add(len).max(last_end);
                last.length = end - last.offset;
                return;
            }
        }
        self.runs.push(Extent::new(offset, len));
    }

    /// The runs.
    pub(crate) fn into_vec(self) -> Vec<Extent> {
        self.runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_adjacent_pushes_merge() {
        let mut r = Runs::default();
        r.push(0, 10);
        r.push(10, 5);
        r.push(20, 1);
        r.push(21, 0);
        assert_eq!(r.into_vec(), vec![Extent::new(0, 15), Extent::new(20, 1)]);
    }
}
