//! The one stop signal future: SIGINT (Ctrl-C), SIGTERM and SIGHUP all ask a Sendense program
//! to stop the same way (a backup failed at the hub, a vCenter snapshot removed, a partial
//! restore removed, the hub's connections drained).

use std::fmt;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (systemd stop, `kill`).
    Terminate,
    /// SIGHUP (the terminal went away).
    Hangup,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        })
    }
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP, and logs which one came.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives while the caller is still busy is not lost (and does not kill the
/// process before it can clean up). A signal that cannot be listened for is logged and
/// ignored. Needs a tokio runtime with signal support.
pub fn stop_signal() -> impl Future<Output = StopSignal> + Send + 'static {
    let listen = |kind: SignalKind, which: StopSignal| {
        signal(kind)
            .inspect_err(
                |e| tracing::warn!(signal = %which, error = %e, "cannot listen for a signal"),
            )
            .ok()
    };
    let mut int = listen(SignalKind::interrupt(), StopSignal::Interrupt);
    let mut term = listen(SignalKind::terminate(), StopSignal::Terminate);
    let mut hup = listen(SignalKind::hangup(), StopSignal::Hangup);
    async move {
        let which = tokio::select! {
            () = recv(int.as_mut()) => StopSignal::Interrupt,
            () = recv(term.as_mut()) => StopSignal::Terminate,
            () = recv(hup.as_mut()) => StopSignal::Hangup,
        };
        tracing::warn!(signal = %which, "stop signal: stopping");
        which
    }
}

/// [`stop_signal`] for callers that only need to know that one came: resolves to `()`. The
/// handlers are installed when this is called, as for [`stop_signal`].
pub fn stopped() -> impl Future<Output = ()> + Send + 'static {
    let stop = stop_signal();
    async move {
        stop.await;
    }
}

async fn recv(s: Option<&mut Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_stop_signal_resolves_the_future() {
        for (sig, want) in [
            (rustix::process::Signal::HUP, StopSignal::Hangup),
            (rustix::process::Signal::TERM, StopSignal::Terminate),
            (rustix::process::Signal::INT, StopSignal::Interrupt),
        ] {
            let stop = stop_signal();
            rustix::process::kill_process(rustix::process::getpid(), sig).unwrap();
            assert_eq!(stop.await, want);
        }
    }
}
