//! The one rule for pausing between attempts. Each caller names its own numbers (a
//! `const` beside the loop that retries, saying why), and how the pause grows with
//! failures lives only here.

use std::time::Duration;

/// How long to pause before the next attempt after some failures in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    doubling: bool,
}

impl Backoff {
    /// `step`, `2 × step`, `3 × step`, ... at most `max`.
    pub(crate) const fn linear(step: Duration, max: Duration) -> Self {
        Backoff {
            first: step,
            max,
            doubling: false,
        }
    }

    /// `first`, `2 × first`, `4 × first`, ... at most `max`.
    pub(crate) const fn doubling(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            doubling: true,
        }
    }

    /// The pause after `failures` failures in a row (0 counts as 1: there is always a
    /// pause before trying again).
    pub(crate) fn after(&self, failures: u32) -> Duration {
        let n = failures.max(1);
        let grown = if self.doubling {
            self.first.saturating_mul(1u32 << (n - 1).min(30))
        } else {
            self.first.saturating_mul(n)
        };
        grown.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn linear_pauses_grow_by_the_step_up_to_the_cap() {
        let b = Backoff::linear(20 * MS, 200 * MS);
        let pauses: Vec<_> = [0, 1, 2, 9, 10, 11, u32::MAX].map(|f| b.after(f)).into();
        assert_eq!(
            pauses,
            [20, 20, 40, 180, 200, 200, 200].map(|ms| ms * MS).to_vec()
        );
    }

    #[test]
    fn doubling_pauses_double_up_to_the_cap() {
        let b = Backoff::doubling(50 * MS, 1000 * MS);
        let pauses: Vec<_> = [1, 2, 3, 5, 6, 40, u32::MAX].map(|f| b.after(f)).into();
        assert_eq!(
            pauses,
            [50, 100, 200, 800, 1000, 1000, 1000]
                .map(|ms| ms * MS)
                .to_vec()
        );
    }
}
