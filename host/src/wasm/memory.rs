//! Guest memory access, in one small audited place.
//!
//! Every pointer a plugin hands the host is untrusted. Reads and writes go through the
//! functions here, which check `ptr + len` against the current memory size with overflow
//! checks and return [`MemoryError`] — turned into `INVALID_MEMORY_ACCESS` for the guest —
//! instead of touching anything outside the sandbox. Results the host returns to the guest
//! are allocated with the guest's own allocator (`proxy_on_memory_allocate` or `malloc`),
//! exactly their length; empty results are `(0, 0)` without allocating, as in Envoy.

use wasmtime::{AsContextMut, Caller, Extern, Memory, TypedFunc};

use super::host::HostState;

/// A guest pointer or length that does not fit the guest's memory, or a guest without the
/// exports the ABI needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError;

pub type MemoryResult<T> = Result<T, MemoryError>;

/// The guest's memory: looked up once per instance (a name lookup on every host call
/// would cost more than many of the calls themselves).
fn memory(caller: &mut Caller<'_, HostState>) -> MemoryResult<Memory> {
    if let Some(memory) = caller.data().guest.memory {
        return Ok(memory);
    }
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => {
            caller.data_mut().guest.memory = Some(memory);
            Ok(memory)
        }
        _ => Err(MemoryError),
    }
}

fn range(ptr: u32, len: u32, size: usize) -> MemoryResult<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(MemoryError)?;
    if end > size {
        return Err(MemoryError);
    }
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub fn read(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> MemoryResult<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let memory = memory(caller)?;
    let data = memory.data(&caller);
    let range = range(ptr, len, data.len())?;
    Ok(data[range].to_vec())
}

/// Lends `len` bytes at `ptr` of guest memory to `f` together with the host state, so that
/// a key the guest passes is looked up without being copied out.
pub fn with_guest_bytes<R>(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
    f: impl FnOnce(&[u8], &mut HostState) -> R,
) -> MemoryResult<R> {
    if len == 0 {
        return Ok(f(&[], caller.data_mut()));
    }
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller.as_context_mut());
    let range = range(ptr, len, data.len())?;
    Ok(f(&data[range], state))
}

/// As [`with_guest_bytes`] for two ranges at once (a header's name and value, say).
pub fn with_guest_byte_pair<R>(
    caller: &mut Caller<'_, HostState>,
    first: (u32, u32),
    second: (u32, u32),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> R,
) -> MemoryResult<R> {
    if first.1 == 0 && second.1 == 0 {
        return Ok(f(&[], &[], caller.data_mut()));
    }
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller.as_context_mut());
    let lend = |(ptr, len): (u32, u32)| -> MemoryResult<&[u8]> {
        if len == 0 {
            return Ok(&[]);
        }
        Ok(&data[range(ptr, len, data.len())?])
    };
    Ok(f(lend(first)?, lend(second)?, state))
}

/// Whether `len` bytes at `ptr` lie in guest memory, without reading them.
pub fn check(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> MemoryResult<()> {
    if len == 0 {
        return Ok(());
    }
    let memory = memory(caller)?;
    range(ptr, len, memory.data_size(&caller)).map(|_| ())
}

/// Reads a UTF-8 string (lossily: header names and keys from plugins are treated as bytes).
pub fn read_string(caller: &mut Caller<'_, HostState>, ptr: u32, len: u32) -> MemoryResult<String> {
    // Valid UTF-8 (nearly always) keeps the one copy `read` made.
    read(caller, ptr, len).map(|bytes| {
        String::from_utf8(bytes)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
    })
}

/// Writes `bytes` at `ptr`.
pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> MemoryResult<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let memory = memory(caller)?;
    let data = memory.data_mut(caller.as_context_mut());
    let range = range(ptr, bytes.len() as u32, data.len())?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 at `ptr`.
pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> MemoryResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> MemoryResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// The guest's allocator: `proxy_on_memory_allocate`, or `malloc` for modules that export
/// only that.
/// Takes the guest's allocator out of the store data (found on first use); the caller puts
/// it back with [`restore_allocator`]. Moving it avoids cloning its type information on
/// every call.
fn take_allocator(caller: &mut Caller<'_, HostState>) -> MemoryResult<TypedFunc<u32, u32>> {
    if let Some(allocate) = caller.data_mut().guest.allocator.take() {
        return Ok(allocate);
    }
    for name in ["proxy_on_memory_allocate", "malloc"] {
        if let Some(Extern::Func(func)) = caller.get_export(name) {
            return func.typed::<u32, u32>(&caller).map_err(|_| MemoryError);
        }
    }
    Err(MemoryError)
}

fn restore_allocator(caller: &mut Caller<'_, HostState>, allocate: TypedFunc<u32, u32>) {
    caller.data_mut().guest.allocator = Some(allocate);
}

/// The guest exports host functions use, found on first use.
#[derive(Default)]
pub struct GuestExports {
    memory: Option<Memory>,
    allocator: Option<TypedFunc<u32, u32>>,
}

/// Allocates `bytes.len()` bytes in the guest, copies `bytes` there and stores the pointer
/// and length at `return_ptr` / `return_len`. An empty result stores `(0, 0)`.
///
/// A trap inside the guest allocator (out of memory, epoch deadline) is returned as `Err`
/// of the outer result so that the host function can propagate the trap.
pub fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    return_ptr: u32,
    return_len: u32,
) -> wasmtime::Result<MemoryResult<()>> {
    return_with(caller, bytes.len(), return_ptr, return_len, |_, out| {
        out.copy_from_slice(bytes)
    })
}

/// As [`return_bytes`] for a result of `len` bytes that `fill` writes straight into the
/// guest's memory, from the host state (a header map, say), with no copy on the host side.
/// `fill` must write all `len` bytes.
pub fn return_with(
    caller: &mut Caller<'_, HostState>,
    len: usize,
    return_ptr: u32,
    return_len: u32,
    fill: impl FnOnce(&HostState, &mut [u8]),
) -> wasmtime::Result<MemoryResult<()>> {
    if len == 0 {
        return Ok(write_u32(caller, return_ptr, 0).and_then(|()| write_u32(caller, return_len, 0)));
    }
    let Ok(len32) = u32::try_from(len) else {
        return Ok(Err(MemoryError));
    };
    let allocate = match take_allocator(caller) {
        Ok(allocate) => allocate,
        Err(error) => return Ok(Err(error)),
    };
    let allocated = allocate.call(&mut *caller, len32);
    restore_allocator(caller, allocate);
    let guest_ptr = allocated?;
    if guest_ptr == 0 {
        return Ok(Err(MemoryError));
    }
    let memory = match memory(caller) {
        Ok(memory) => memory,
        Err(error) => return Ok(Err(error)),
    };
    // The result and where it is: one borrow of the guest's memory for the three writes
    // (each borrow is a lookup in the store), every range checked before anything is
    // written.
    let (data, state) = memory.data_and_store_mut(caller.as_context_mut());
    let ranges = range(guest_ptr, len32, data.len()).and_then(|result| {
        Ok((
            result,
            range(return_ptr, 4, data.len())?,
            range(return_len, 4, data.len())?,
        ))
    });
    let (result, at_ptr, at_len) = match ranges {
        Ok(ranges) => ranges,
        Err(error) => return Ok(Err(error)),
    };
    fill(state, &mut data[result]);
    data[at_ptr].copy_from_slice(&guest_ptr.to_le_bytes());
    data[at_len].copy_from_slice(&len32.to_le_bytes());
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_for_overflow_and_size() {
        assert_eq!(range(0, 4, 4), Ok(0..4));
        assert_eq!(range(1, 4, 4), Err(MemoryError));
        assert_eq!(
            range(u32::MAX, 2, usize::MAX),
            Ok(u32::MAX as usize..u32::MAX as usize + 2)
        );
        assert_eq!(range(u32::MAX, u32::MAX, 1 << 20), Err(MemoryError));
    }
}
