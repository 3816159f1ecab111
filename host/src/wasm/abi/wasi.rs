//! The WASI preview-1 functions a Rust `wasm32-wasip1` module imports, sandboxed: output
//! goes to the log, clocks and randomness work, the environment is the plugin's configured
//! `env` only, and there are no files, directories or sockets (every descriptor is bad).
//! Any other WASI import a module declares answers `ENOSYS` (see [`define_missing`]).
//!
//! Like Envoy, the host offers the same functions under both WASI module names: the current
//! `wasi_snapshot_preview1` and the older `wasi_unstable`, which other SDKs' toolchains still
//! emit (AssemblyScript's `proc_exit`, for one). The functions defined here have the same
//! signatures under both names.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module, Val};

use super::LogLevel;
use crate::wasm::host::HostState;
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

/// The import module names the WASI functions are defined under.
pub const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];
const ERRNO_SUCCESS: u32 = 0;
const ERRNO_BADF: u32 = 8;
const ERRNO_FAULT: u32 = 21;
const ERRNO_INVAL: u32 = 28;
const ERRNO_NOSYS: u32 = 52;

/// The WASI functions `add_to_linker` defines.
const DEFINED: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "sched_yield",
    "proc_exit",
    "fd_close",
    "fd_seek",
    "fd_read",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_filestat_get",
];

fn errno(result: Result<(), memory::MemoryError>) -> u32 {
    match result {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

fn fd_write(mut caller: Ctx<'_>, fd: u32, iovs: u32, iovs_len: u32, ret_written: u32) -> u32 {
    if fd != 1 && fd != 2 {
        return ERRNO_BADF;
    }
    let result = (|| {
        let mut text = Vec::new();
        for i in 0..iovs_len.min(1024) {
            let iov = memory::read(&mut caller, iovs.wrapping_add(i * 8), 8)?;
            let ptr = u32::from_le_bytes(iov[0..4].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(iov[4..8].try_into().unwrap_or_default());
            text.extend(memory::read(&mut caller, ptr, len)?);
        }
        let written = text.len() as u32;
        let message = String::from_utf8_lossy(&text);
        let message = message.trim_end();
        if !message.is_empty() {
            // stderr is where Rust panics go: keep it visible.
            let level = if fd == 2 {
                LogLevel::Warn
            } else {
                LogLevel::Info
            };
            super::misc::emit_log(caller.data_mut(), level, message);
        }
        memory::write_u32(&mut caller, ret_written, written)
    })();
    errno(result)
}

fn clock_time_get(mut caller: Ctx<'_>, clock: u32, _precision: u64, ret: u32) -> u32 {
    let nanos = match clock {
        // realtime, monotonic, process and thread CPU time: wall-clock nanoseconds serve all.
        0..=3 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        _ => return ERRNO_INVAL,
    };
    errno(memory::write_u64(&mut caller, ret, nanos))
}

fn random_get(mut caller: Ctx<'_>, ptr: u32, len: u32) -> u32 {
    let mut bytes = vec![0u8; len.min(1 << 20) as usize];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    errno(memory::write(&mut caller, ptr, &bytes))
}

fn environ(state: &HostState) -> Vec<Vec<u8>> {
    state
        .plugin
        .env
        .iter()
        .map(|(key, value)| format!("{key}={value}\0").into_bytes())
        .collect()
}

fn environ_sizes_get(mut caller: Ctx<'_>, ret_count: u32, ret_size: u32) -> u32 {
    let entries = environ(caller.data());
    let size: usize = entries.iter().map(Vec::len).sum();
    errno(
        memory::write_u32(&mut caller, ret_count, entries.len() as u32)
            .and_then(|()| memory::write_u32(&mut caller, ret_size, size as u32)),
    )
}

fn environ_get(mut caller: Ctx<'_>, pointers: u32, buffer: u32) -> u32 {
    let entries = environ(caller.data());
    let mut at = buffer;
    let result = entries.iter().enumerate().try_for_each(|(i, entry)| {
        memory::write_u32(&mut caller, pointers.wrapping_add(i as u32 * 4), at)?;
        memory::write(&mut caller, at, entry)?;
        at = at.wrapping_add(entry.len() as u32);
        Ok(())
    });
    errno(result)
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for module in MODULES {
        add_module(linker, module)?;
    }
    Ok(())
}

/// Defines the WASI functions under the import module name `module`.
fn add_module(linker: &mut Linker<HostState>, module: &str) -> wasmtime::Result<()> {
    linker.func_wrap(module, "fd_write", fd_write)?;
    linker.func_wrap(module, "clock_time_get", clock_time_get)?;
    linker.func_wrap(
        module,
        "clock_res_get",
        |mut caller: Ctx<'_>, _clock: u32, ret: u32| errno(memory::write_u64(&mut caller, ret, 1)),
    )?;
    linker.func_wrap(module, "random_get", random_get)?;
    linker.func_wrap(module, "environ_sizes_get", environ_sizes_get)?;
    linker.func_wrap(module, "environ_get", environ_get)?;
    linker.func_wrap(
        module,
        "args_sizes_get",
        |mut caller: Ctx<'_>, ret_count: u32, ret_size: u32| {
            errno(
                memory::write_u32(&mut caller, ret_count, 0)
                    .and_then(|()| memory::write_u32(&mut caller, ret_size, 0)),
            )
        },
    )?;
    linker.func_wrap(module, "args_get", |_: Ctx<'_>, _: u32, _: u32| {
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(module, "sched_yield", |_: Ctx<'_>| ERRNO_SUCCESS)?;
    linker.func_wrap(
        module,
        "proc_exit",
        |_: Ctx<'_>, code: u32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the plugin called proc_exit({code})"
            )))
        },
    )?;
    // No descriptors exist beyond stdout and stderr: files, directories and sockets are denied.
    linker.func_wrap(module, "fd_close", |_: Ctx<'_>, _fd: u32| ERRNO_BADF)?;
    linker.func_wrap(
        module,
        "fd_seek",
        |_: Ctx<'_>, _fd: u32, _offset: i64, _whence: u32, _ret: u32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        module,
        "fd_read",
        |_: Ctx<'_>, _fd: u32, _iovs: u32, _len: u32, _ret: u32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        module,
        "fd_fdstat_get",
        |_: Ctx<'_>, _fd: u32, _ret: u32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        module,
        "fd_prestat_get",
        |_: Ctx<'_>, _fd: u32, _ret: u32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        module,
        "fd_prestat_dir_name",
        |_: Ctx<'_>, _fd: u32, _ptr: u32, _len: u32| ERRNO_BADF,
    )?;
    linker.func_wrap(
        module,
        "fd_filestat_get",
        |_: Ctx<'_>, _fd: u32, _ret: u32| ERRNO_BADF,
    )?;
    Ok(())
}

/// Defines every other WASI import `module` declares (under either module name) as a
/// function answering `ENOSYS`, so that a module pulling in, say, `path_open` still loads but
/// cannot use it.
pub fn define_missing(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        if !MODULES.contains(&import.module()) {
            continue;
        }
        if DEFINED.contains(&import.name()) {
            continue;
        }
        let Some(func_type) = import.ty().func().cloned() else {
            continue;
        };
        let results: Vec<_> = func_type.results().collect();
        linker.func_new(
            import.module(),
            import.name(),
            func_type,
            move |_caller, _params, out| {
                for (slot, ty) in out.iter_mut().zip(&results) {
                    *slot = match ty {
                        wasmtime::ValType::I64 => Val::I64(i64::from(ERRNO_NOSYS)),
                        _ => Val::I32(ERRNO_NOSYS as i32),
                    };
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}
