//! `tollgate-abi`: the proxy-wasm host calls the plugin SDK makes itself rather than
//! through the upstream `proxy-wasm` crate.
//!
//! Only where the upstream crate copies more than the ABI asks. Its `get_property` and
//! `set_property` take a property's path as a `Vec` of segments and join them into a second
//! `Vec`: two allocations and two frees on every property a request reads or writes. Here
//! the caller hands the path already joined (segments separated by NUL bytes, as the ABI
//! sends it), which the SDK makes on the stack. The functions are the same imports
//! (`env.proxy_get_property`, `env.proxy_set_property`) with the same signatures, so a
//! module imports each once whichever crate calls it.

// The status as the integer it is on the wire: a host may answer one the upstream enum
// lacks, and an enum may not hold a value it does not name.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// The ABI's `Ok`.
const OK: u32 = 0;

/// The property at `path` (segments joined by NUL bytes); `None` when the host has none
/// or refused the read.
pub fn get_property(path: &[u8]) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: `path` is live for the call; the host writes the two results through the
    // pointers to the locals above.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    if status != OK || data.is_null() {
        return None;
    }
    // SAFETY: the host put the value in `size` bytes it allocated through the guest's
    // `proxy_on_memory_allocate`, which allocates them from the global allocator with the
    // layout of a `Vec<u8>` of that capacity (as the upstream crate relies on too); the
    // `Vec` owns and frees them.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Sets the property at `path` (segments joined by NUL bytes) to `value`; false when the
/// host refused.
pub fn set_property(path: &[u8], value: &[u8]) -> bool {
    // SAFETY: both buffers are live for the call; the host only reads them.
    let status =
        unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
    status == OK
}
