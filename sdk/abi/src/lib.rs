//! `tollgate-abi`: the proxy-wasm host calls the plugin SDK makes itself rather than
//! through the upstream `proxy-wasm` crate.
//!
//! Only where the upstream crate copies more than the ABI asks, or panics where the ABI
//! answers with a status. Its `get_property` and
//! `set_property` take a property's path as a `Vec` of segments and join them into a second
//! `Vec`: two allocations and two frees on every property a request reads or writes. Here
//! the caller hands the path already joined (segments separated by NUL bytes, as the ABI
//! sends it), which the SDK makes on the stack. The functions are the same imports
//! (`env.proxy_get_property`, `env.proxy_set_property`) with the same signatures, so a
//! module imports each once whichever crate calls it.
//!
//! The upstream crate's `define_metric`, `increment_metric`, `record_metric` and
//! `set_shared_data` panic on any status they do not expect, and a panic traps the plugin's
//! VM. A host answers those calls with `BAD_ARGUMENT` or `INTERNAL_FAILURE` for reasons a
//! request can bring about (a metric name built from a consumer's name, a plugin's metric
//! limit reached, a value larger than the shared data allows), so these return the status
//! instead.

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
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
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

/// Defines a metric of `metric_type` (0 counter, 1 gauge, 2 histogram) named `name`: its
/// id, or the host's status when it refused.
pub fn define_metric(metric_type: u32, name: &[u8]) -> Result<u32, u32> {
    let mut id: u32 = 0;
    // SAFETY: `name` is live for the call; the host writes the id through the pointer to
    // the local above.
    let status = unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) };
    match status {
        OK => Ok(id),
        refused => Err(refused),
    }
}

/// Adds `offset` to metric `metric_id`; the host's status when it refused.
pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), u32> {
    // SAFETY: no memory is passed.
    match unsafe { proxy_increment_metric(metric_id, offset) } {
        OK => Ok(()),
        refused => Err(refused),
    }
}

/// Records `value` in metric `metric_id` (a histogram's observation, a gauge's value); the
/// host's status when it refused.
pub fn record_metric(metric_id: u32, value: u64) -> Result<(), u32> {
    // SAFETY: no memory is passed.
    match unsafe { proxy_record_metric(metric_id, value) } {
        OK => Ok(()),
        refused => Err(refused),
    }
}

/// Writes `value` under `key` in the shared data when its version is `cas` (0: whatever
/// it is); the host's status when it refused (`CAS_MISMATCH` among them).
pub fn set_shared_data(key: &[u8], value: &[u8], cas: u32) -> Result<(), u32> {
    // SAFETY: both buffers are live for the call; the host only reads them.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        OK => Ok(()),
        refused => Err(refused),
    }
}
