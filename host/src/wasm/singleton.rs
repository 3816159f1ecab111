//! Singleton plugins: one VM and one root context for the whole gateway, in no route chain
//! — the place for work that belongs to the gateway rather than to a request, such as
//! refreshing keys on a timer or aggregating what route plugins report (Envoy's
//! `WasmService` with `singleton: true`).
//!
//! Every singleton runs on one dedicated thread with its own current-thread runtime, the
//! singleton thread, so the per-thread machinery of [`Plugin`] serves it unchanged: its
//! VM is the one in that thread's slot, and its ticks, queue wake-ups and HTTP and gRPC
//! callouts run as tasks there. Workers never build a VM of a singleton.
//!
//! Its life follows the snapshot that holds it:
//!
//! - The snapshot build starts its VM (`on_vm_start`, `on_configure`) like any plugin's
//!   canary, but keeps that VM: [`launch`] hands it to the singleton thread before the
//!   snapshot serves (at start-up, and in a swap before the pointer changes), so the new
//!   singleton runs before the one it replaces is retired, and `on_vm_start` runs once per
//!   instance.
//! - A swap that drops it, and the drain at shutdown, [`retire`] it with `proxy_on_done`
//!   and wait for `proxy_done` within the drain timeout, as workers retire their VMs. At
//!   shutdown that comes after the workers have retired theirs, so what route plugins
//!   flush in their `on_done` still reaches it.
//! - A trap in any of its callbacks is counted and logged like every plugin's trap and
//!   discards the VM; no request comes along to build the next one, so [`restart_later`]
//!   does, after a back-off that doubles with each trap of the last minute and waits for
//!   the plugin's circuit to let a probe through when repeated traps opened it.

use std::sync::mpsc;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::circuit::Admission;
use super::plugin::Plugin;

type Job = Box<dyn FnOnce() + Send>;

/// The first restart after a trap waits this long; each further trap within the last
/// minute doubles it.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The singleton thread, started when first needed; its jobs run inside its runtime.
static THREAD: LazyLock<UnboundedSender<Job>> = LazyLock::new(|| {
    let (jobs, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new()
        .name("tollgate-singletons".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the singleton runtime");
            runtime.block_on(async move {
                while let Some(job) = receiver.recv().await {
                    job();
                }
            });
        })
        .expect("cannot start the singleton thread");
    jobs
});

/// Runs `job` on the singleton thread; the receiver gets its result.
fn on_singleton_thread<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> mpsc::Receiver<R> {
    let (reply, result) = mpsc::channel();
    let _ = THREAD.send(Box::new(move || {
        let _ = reply.send(job());
    }));
    result
}

/// Hands the singletons among `plugins` that do not run yet their VMs, started with the
/// snapshot, on the singleton thread. Returns once they run: ticks are scheduled and the
/// callouts their start asked for are under way.
pub fn launch(plugins: &[Arc<Plugin>]) {
    let singletons: Vec<Arc<Plugin>> = plugins.iter().filter(|p| p.singleton).cloned().collect();
    if singletons.is_empty() {
        return;
    }
    let launched = on_singleton_thread(move || {
        for plugin in &singletons {
            if plugin.take_over_parked_vm() {
                tracing::info!(plugin = %plugin.name, "singleton plugin running");
            }
        }
    });
    let _ = launched.recv();
}

/// Retires the singletons among `plugins` on the singleton thread: `proxy_on_done` on
/// their root contexts, then their VMs keep running until each calls `proxy_done` or
/// `deadline` passes. The receiver hears when all are retired.
pub fn retire(plugins: &[Arc<Plugin>], deadline: Instant) -> mpsc::Receiver<()> {
    let singletons: Vec<Arc<Plugin>> = plugins.iter().filter(|p| p.singleton).cloned().collect();
    let (reply, retired) = mpsc::channel();
    if singletons.is_empty() {
        let _ = reply.send(());
        return retired;
    }
    let _ = THREAD.send(Box::new(move || {
        let mut retiring = tokio::task::JoinSet::new();
        for plugin in singletons {
            // Before on_done: a trap in it must not bring the singleton back.
            plugin.mark_retired();
            retiring.spawn(plugin.retire(deadline));
        }
        tokio::spawn(async move {
            while retiring.join_next().await.is_some() {}
            let _ = reply.send(());
        });
    }));
    retired
}

/// Gives a singleton whose VM trapped a fresh one, on the singleton thread (where the trap
/// happened): after the back-off, and through the circuit's half-open probe when it is
/// open. Stops when the singleton is retired or gone.
pub(super) fn restart_later(plugin: &Arc<Plugin>) {
    let plugin = Arc::downgrade(plugin);
    tokio::spawn(async move {
        loop {
            let delay = {
                let Some(plugin) = plugin.upgrade() else {
                    return;
                };
                restart_delay(plugin.circuit.view().traps_in_window)
            };
            tokio::time::sleep(delay).await;
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            if plugin.is_retired() {
                return;
            }
            let probe = match plugin.circuit.admit() {
                Admission::Refused => continue,
                Admission::Probe => true,
                Admission::Run => false,
            };
            match plugin.with_vm(|_, _| Ok(())) {
                Ok(()) => {
                    if probe {
                        plugin.circuit.probe_done();
                    }
                    return;
                }
                Err(failure) => {
                    if probe {
                        plugin.circuit.probe_failed();
                    }
                    tracing::warn!(plugin = %plugin.name, %failure, "singleton plugin not restarted yet");
                }
            }
        }
    });
}

/// The wait before restarting a singleton that trapped `traps` times in the last minute.
fn restart_delay(traps: usize) -> Duration {
    let doublings = traps.saturating_sub(1).min(16) as u32;
    FIRST_RESTART_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_RESTART_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_delay_doubles_with_recent_traps_up_to_a_cap() {
        assert_eq!(restart_delay(0), FIRST_RESTART_DELAY);
        assert_eq!(restart_delay(1), FIRST_RESTART_DELAY);
        assert_eq!(restart_delay(2), FIRST_RESTART_DELAY * 2);
        assert_eq!(restart_delay(4), FIRST_RESTART_DELAY * 8);
        assert_eq!(restart_delay(1000), MAX_RESTART_DELAY);
    }
}
