//! The host's shared data as a [`Store`].

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use super::{SharedError, Store};

/// The host's shared data (`proxy_get_shared_data` / `proxy_set_shared_data`) of the
/// plugin's `vm_id`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedData;

impl Store for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), SharedError> {
        hostcalls::get_shared_data(key).map_err(|status| SharedError::Host(format!("{status:?}")))
    }

    /// Through the SDK's own host call: the `proxy-wasm` crate's panics on any refusal but
    /// `CAS_MISMATCH`, and a host refuses a value larger than its shared data allows
    /// (`BAD_ARGUMENT`), which a cached callout answer can be.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        match tollgate_abi::set_shared_data(key.as_bytes(), value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(status) if status == Status::CasMismatch as u32 => Err(SharedError::CasMismatch),
            Err(status) => Err(SharedError::Host(format!("status {status}"))),
        }
    }
}
