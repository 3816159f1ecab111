//! Logging, time, ticks, plugin metrics, effective context, `proxy_done` and foreign
//! functions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::{status, LogLevel, Status};
use crate::wasm::callbacks::Callbacks;
use crate::wasm::host::HostState;
use crate::wasm::memory;
use crate::wasm::metrics::{MetricKind, PluginMetric};

type Ctx<'a> = Caller<'a, HostState>;

/// Routes a plugin's log line through `tracing` with the plugin's name, and keeps it while
/// the plugin starts so that a refusal can quote it.
pub fn emit_log(state: &mut HostState, level: LogLevel, message: &str) {
    let plugin = state.plugin.name.as_str();
    match level {
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "plugin", plugin, "{message}")
        }
    }
    if let Some(lines) = state.startup_log.as_mut() {
        if lines.len() < 100 {
            lines.push(message.to_string());
        }
    }
}

fn log(mut caller: Ctx<'_>, level: u32, ptr: u32, len: u32) -> u32 {
    status((|| {
        let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
        let state = caller.data();
        if level < state.log_level && state.startup_log.is_none() {
            // Below the gateway's level and past start-up: nobody reads it, so it is only
            // checked, not copied out of the guest (SDK plugins log per request at debug
            // level).
            return Ok(memory::check(&mut caller, ptr, len)?);
        }
        let message = memory::read_string(&mut caller, ptr, len)?;
        emit_log(caller.data_mut(), level, &message);
        Ok(())
    })())
}

fn get_log_level(mut caller: Ctx<'_>, ret: u32) -> u32 {
    let level = caller.data().log_level as u32;
    status(memory::write_u32(&mut caller, ret, level).map_err(Status::from))
}

fn get_current_time(mut caller: Ctx<'_>, ret: u32) -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    status(memory::write_u64(&mut caller, ret, now).map_err(Status::from))
}

fn set_tick_period(mut caller: Ctx<'_>, period_ms: u32) -> u32 {
    let root = caller.data().effective_root();
    let state = caller.data_mut();
    let Some(root) = state.roots.get_mut(&root) else {
        return Status::BadArgument as u32;
    };
    root.tick_period = (period_ms > 0).then(|| Duration::from_millis(u64::from(period_ms)));
    Status::Ok as u32
}

fn metric(state: &HostState, id: u32) -> Option<std::sync::Arc<PluginMetric>> {
    state
        .metrics
        .get(&id)
        .cloned()
        .or_else(|| state.registries.metrics.by_id(id))
}

fn define_metric(mut caller: Ctx<'_>, kind: u32, name_ptr: u32, name_len: u32, ret_id: u32) -> u32 {
    status((|| {
        let kind = MetricKind::from_raw(kind).ok_or(Status::BadArgument)?;
        let name = memory::read_string(&mut caller, name_ptr, name_len)?;
        let state = caller.data();
        let plugin = &state.plugin;
        let registries = &state.registries;
        let metric = registries
            .metrics
            .define(&plugin.name, &name, kind, plugin.limits.metrics)
            .inspect_err(|status| {
                if *status == Status::InternalFailure {
                    let metrics = &registries.gateway_metrics;
                    metrics.plugin_limit_refusal(&plugin.name, "metrics");
                    metrics.plugin_metric_series_refused(&plugin.name);
                }
            })?;
        memory::write_u32(&mut caller, ret_id, metric.id)?;
        caller.data_mut().metrics.insert(metric.id, metric);
        Ok(())
    })())
}

fn increment_metric(caller: Ctx<'_>, id: u32, offset: i64) -> u32 {
    status((|| {
        let metric = metric(caller.data(), id).ok_or(Status::NotFound)?;
        if metric.kind == MetricKind::Histogram {
            return Err(Status::BadArgument);
        }
        metric.increment(offset);
        Ok(())
    })())
}

fn record_metric(caller: Ctx<'_>, id: u32, value: u64) -> u32 {
    status((|| {
        metric(caller.data(), id)
            .ok_or(Status::NotFound)?
            .record(value);
        Ok(())
    })())
}

fn get_metric(mut caller: Ctx<'_>, id: u32, ret: u32) -> u32 {
    status((|| {
        let value = metric(caller.data(), id).ok_or(Status::NotFound)?.get();
        memory::write_u64(&mut caller, ret, value)?;
        Ok(())
    })())
}

fn set_effective_context(mut caller: Ctx<'_>, context_id: u32) -> u32 {
    let state = caller.data_mut();
    if state.streams.contains_key(&context_id) || state.roots.contains_key(&context_id) {
        state.effective_context = context_id;
        Status::Ok as u32
    } else {
        Status::BadArgument as u32
    }
}

fn done(mut caller: Ctx<'_>) -> u32 {
    let root = caller.data().effective_root();
    let state = caller.data_mut();
    if !state.roots.contains_key(&root) {
        return Status::NotFound as u32;
    }
    state.done_roots.push(root);
    Status::Ok as u32
}

/// The one foreign function: `tollgate.callbacks`, one byte as in the module's section of
/// that name (see `wasm::callbacks`), called by a root context in `on_configure` to say
/// which request callbacks its configuration needs (the SDK's `Plugin::callbacks`). Any
/// other name is unknown, as in an Envoy build without extensions, which is also what
/// Envoy answers this one: the SDK then goes on as before.
fn call_foreign_function(
    mut caller: Ctx<'_>,
    name_ptr: u32,
    name_len: u32,
    args_ptr: u32,
    args_len: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> u32 {
    status((|| {
        let name = memory::read(&mut caller, name_ptr, name_len)?;
        if name != Callbacks::SECTION.as_bytes() {
            return Err(Status::NotFound);
        }
        let [bits] = memory::read(&mut caller, args_ptr, args_len)?[..] else {
            return Err(Status::BadArgument);
        };
        let state = caller.data_mut();
        let root = state.effective_context;
        let Some(root) = state.roots.get_mut(&root) else {
            return Err(Status::BadArgument);
        };
        root.callbacks = Callbacks::from_bits(bits);
        // No result.
        memory::write_u32(&mut caller, ret_ptr, 0)?;
        memory::write_u32(&mut caller, ret_len, 0)?;
        Ok(())
    })())
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", log)?;
    linker.func_wrap("env", "proxy_get_log_level", get_log_level)?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        get_current_time,
    )?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", set_tick_period)?;
    linker.func_wrap("env", "proxy_define_metric", define_metric)?;
    linker.func_wrap("env", "proxy_increment_metric", increment_metric)?;
    linker.func_wrap("env", "proxy_record_metric", record_metric)?;
    linker.func_wrap("env", "proxy_get_metric", get_metric)?;
    linker.func_wrap("env", "proxy_set_effective_context", set_effective_context)?;
    linker.func_wrap("env", "proxy_done", done)?;
    linker.func_wrap("env", "proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}
