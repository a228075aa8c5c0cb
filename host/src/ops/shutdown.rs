//! The shutdown signal: SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C),
//! turned into a value every long-running task can wait on. The first
//! signal asks for a graceful shutdown; a second one exits at once.

use tokio::sync::watch;

/// Resolves once shutdown has been asked for. Clone it for each task.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal fired by SIGTERM or SIGINT. A second signal exits the
    /// process at once with 128 + its number. Must be called inside a tokio
    /// runtime.
    pub fn on_signals() -> Self {
        let (fire, shutdown) = Self::manual();
        tokio::spawn(async move {
            wait_for_signal().await;
            fire();
            let code = match wait_for_signal().await {
                Signal::Interrupt => 130,
                Signal::Terminate => 143,
            };
            tracing::warn!(
                exit_code = code,
                "second signal: exiting now, without waiting for work in flight"
            );
            std::process::exit(code);
        });
        shutdown
    }

    /// Whether shutdown has been asked for.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// A signal fired by calling the returned function: for tests and for
    /// embedding.
    pub fn manual() -> (impl FnOnce() + Send + 'static, Self) {
        let (sender, receiver) = watch::channel(false);
        // `send` fails only when every receiver is gone: nobody to tell.
        let fire = move || {
            let _ = sender.send(true);
        };
        (fire, Self(receiver))
    }

    /// Waits until shutdown is asked for (or whoever could ask is gone).
    pub async fn wait(mut self) {
        // An error means the sender is gone, which can only be shutdown too.
        let _ = self.0.wait_for(|asked| *asked).await;
    }
}

enum Signal {
    Interrupt,
    Terminate,
}

async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop pulse");
            None
        }
    };
    let sigterm = async {
        match terminate.as_mut() {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => {
                tracing::info!("received SIGINT, shutting down");
                Signal::Interrupt
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<Signal>().await
            }
        },
        () = sigterm => {
            tracing::info!("received SIGTERM, shutting down");
            Signal::Terminate
        }
    }
}
