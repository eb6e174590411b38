//! Shutdown signalling (mini-redis style): one [`ShutdownHandle`] triggers, every
//! [`Shutdown`] listener sees it. Unlike a broadcast, a listener created after the
//! trigger still sees it, so there is no start-up race.

use tokio::sync::watch;

/// Triggers shutdown. Cheap to clone; `trigger` is synchronous so a signal handler
/// thread can call it.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownHandle {
    /// A handle that has not fired.
    pub fn new() -> Self {
        Self {
            tx: std::sync::Arc::new(watch::channel(false).0),
        }
    }

    /// Asks everything subscribed to stop (idempotent). For a worker: finish the
    /// current mini-batch, return the shard, leave. For a leader: stop now; the job
    /// resumes from the store on restart.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// A listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

/// Listens for shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// True once shutdown was triggered.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is triggered (at once if it already was). If every
    /// handle is dropped without triggering, it never resolves.
    pub async fn recv(&mut self) {
        if self.rx.wait_for(|&v| v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
