//! The `ExportRegistry`: named exports shared (in an `Arc`) by the server and
//! its owner, with the bookkeeping of the connections attached to each.
//!
//! Registry invariant: a name is either present and serving, or absent.
//! `remove` takes the name out at once (no new connection can attach), tells
//! attached connections to close after their in-flight requests, and its
//! future completes when the last one has detached.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Export;
use crate::error::NbdError;
use crate::session::Exports;

/// How long [`ExportRegistry::remove`] waits for an export's connections by default
/// before it cuts them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Named exports, shared (in an `Arc`) by the server and its owner.
#[derive(Debug)]
pub struct ExportRegistry {
    exports: Mutex<BTreeMap<String, Arc<ExportEntry>>>,
    drain_timeout: Duration,
}

impl Default for ExportRegistry {
    fn default() -> Self {
        Self {
            exports: Mutex::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// A registered export with its connection bookkeeping.
#[derive(Debug)]
pub(crate) struct ExportEntry {
    pub(crate) export: Arc<dyn Export>,
    closing: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    connections: watch::Sender<usize>,
    last_activity: Mutex<Instant>,
}

/// Held by a connection in transmission; detaches on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    entry: Arc<ExportEntry>,
}

/// How [`ExportRegistry::remove`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// No export had that name.
    NotFound,
    /// Every connection finished its in-flight requests and closed within the deadline.
    Drained,
    /// The deadline passed with `connections` still open: they were cut (their
    /// sockets closed, unwritten replies dropped, in-flight export calls finished).
    Cut {
        /// Connections open when the deadline passed.
        connections: usize,
    },
}

impl ExportRegistry {
    /// An empty registry; [`Self::remove`] waits [`DEFAULT_DRAIN_TIMEOUT`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The same registry with another drain deadline for [`Self::remove`].
    #[must_use]
    pub const fn with_drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Adds an export.
    ///
    /// # Errors
    /// [`NbdError::DuplicateExport`] if the name exists; [`NbdError::InvalidArgument`]
    /// if the name is longer than 4096 bytes.
    pub fn add(&self, name: impl Into<String>, export: Arc<dyn Export>) -> Result<(), NbdError> {
        let name = name.into();
        if name.len() > crate::wire::MAX_NAME_LEN {
            return Err(NbdError::InvalidArgument {
                what: "export name longer than 4096 bytes",
            });
        }
        let mut map = self.lock();
        if map.contains_key(&name) {
            return Err(NbdError::DuplicateExport { name });
        }
        let entry = ExportEntry {
            export,
            closing: watch::Sender::new(false),
            cut: watch::Sender::new(false),
            connections: watch::Sender::new(0),
            last_activity: Mutex::new(Instant::now()),
        };
        map.insert(name, Arc::new(entry));
        Ok(())
    }

    /// Removes an export. New connections are refused at once; connections
    /// in transmission finish their in-flight requests, answer later ones
    /// with `ESHUTDOWN` and close. Connections still open after the registry's
    /// drain deadline ([`Self::with_drain_timeout`]) are cut: their sockets
    /// close and their unwritten replies are dropped; the export is released
    /// once their in-flight export calls return (waited for up to one more
    /// deadline). The future tells which happened.
    ///
    /// The deadline and the cut run on a task of their own when called inside
    /// a tokio runtime, so they happen even if the returned future is dropped.
    pub fn remove(&self, name: &str) -> impl Future<Output = Removal> + Send + 'static {
        let entry = self.lock().remove(name);
        if let Some(e) = &entry {
            e.closing.send_replace(true);
        }
        let drain = Box::pin(drain(entry, self.drain_timeout));
        let spawned = match tokio::runtime::Handle::try_current() {
            Ok(h) => Ok(h.spawn(drain)),
            Err(_) => Err(drain),
        };
        async move {
            match spawned {
                Ok(task) => match task.await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // The runtime is shutting down: nothing is served any more.
                    Err(_) => Removal::Drained,
                },
                Err(drain) => drain.await,
            }
        }
    }

    /// Current export names, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The export registered under `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.lock().get(name).map(|e| Arc::clone(&e.export))
    }

    /// Connections currently in transmission with this export.
    #[must_use]
    pub fn connection_count(&self, name: &str) -> Option<usize> {
        self.lock().get(name).map(|e| *e.connections.borrow())
    }

    /// When a connection last attached, sent a request or detached.
    #[must_use]
    pub fn last_activity(&self, name: &str) -> Option<Instant> {
        self.lock().get(name).map(|e| {
            *e.last_activity
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        })
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<ExportEntry>> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ExportEntry>>> {
        self.exports.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Exports for ExportRegistry {
    type Attachment = ConnectionGuard;

    fn names(&self) -> Vec<String> {
        Self::names(self)
    }

    fn export(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.get(name)
    }

    fn attach(&self, name: &str) -> Option<(Arc<dyn Export>, ConnectionGuard)> {
        let guard = self.lookup(name)?.attach()?;
        Some((Arc::clone(&guard.entry().export), guard))
    }
}

/// Waits for `entry`'s connections to end, up to `timeout`; then cuts them.
async fn drain(entry: Option<Arc<ExportEntry>>, timeout: Duration) -> Removal {
    let Some(entry) = entry else {
        return Removal::NotFound;
    };
    let mut rx = entry.connections.subscribe();
    // The sender lives in `entry`, so `wait_for` only ends when the count is zero.
    if tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0))
        .await
        .is_ok()
    {
        return Removal::Drained;
    }
    let connections = *rx.borrow();
    tracing::warn!(
        connections,
        "export connections still open after the drain deadline: cutting them"
    );
    entry.cut.send_replace(true);
    let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
    Removal::Cut { connections }
}

impl ExportEntry {
    /// Attaches a connection, or `None` if the export is being removed.
    pub(crate) fn attach(self: &Arc<Self>) -> Option<ConnectionGuard> {
        self.connections.send_modify(|n| *n += 1);
        let guard = ConnectionGuard {
            entry: Arc::clone(self),
        };
        if *self.closing.borrow() {
            return None;
        }
        self.touch();
        Some(guard)
    }

    pub(crate) fn touch(&self) {
        *self
            .last_activity
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Set when a removal's deadline passed: the connection must end now.
    pub(crate) fn cut(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }
}

impl ConnectionGuard {
    pub(crate) fn entry(&self) -> &Arc<ExportEntry> {
        &self.entry
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.entry.touch();
        self.entry
            .connections
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::MemoryExport;

    #[test]
    fn registry_duplicate_add_rejected() {
        let r = ExportRegistry::new();
        r.add("a", Arc::new(MemoryExport::new(1))).unwrap();
        assert!(matches!(
            r.add("a", Arc::new(MemoryExport::new(1))),
            Err(NbdError::DuplicateExport { .. })
        ));
    }
}
