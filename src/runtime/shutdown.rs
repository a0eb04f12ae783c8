//! Graceful shutdown, passed into the runtime so tests can trigger it without signals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once SIGTERM/SIGINT arrives (or a test asks). The loop finishes its batch, commits and
/// leaves the group.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// A shutdown handle that trips on SIGTERM or SIGINT. Needs a tokio runtime.
    pub fn on_signals() -> Shutdown {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: finishing the current batch, then leaving the group"),
                _ = int.recv() => tracing::info!("SIGINT: finishing the current batch, then leaving the group"),
            }
            s.trigger();
        });
        shutdown
    }
}
