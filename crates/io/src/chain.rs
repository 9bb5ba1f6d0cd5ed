//! An error and its causes (`source()` chain) as text: one line for logs and API reasons,
//! a multi-line report for a terminal.

use std::error::Error;

/// The error and every cause, joined with `: ` on one line; control characters (a hostile
/// peer's message) are dropped so the text is safe to log and to store.
#[must_use]
pub fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text.retain(|c| !c.is_control());
    text
}

/// `error: <err>` and one `  caused by: <cause>` line per cause, for stderr.
#[must_use]
pub fn error_report(err: &dyn Error) -> String {
    let mut text = format!("error: {err}");
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str("\n  caused by: ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Self>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    fn sample() -> Layer {
        Layer(
            "backup failed",
            Some(Box::new(Layer(
                "write at 4096",
                Some(Box::new(Layer("disk\nfull", None))),
            ))),
        )
    }

    #[test]
    fn one_line_has_every_cause_and_no_control_characters() {
        assert_eq!(
            error_chain(&sample()),
            "backup failed: write at 4096: diskfull"
        );
    }

    #[test]
    fn report_puts_each_cause_on_its_own_line() {
        assert_eq!(
            error_report(&sample()),
            "error: backup failed\n  caused by: write at 4096\n  caused by: disk\nfull"
        );
    }
}
