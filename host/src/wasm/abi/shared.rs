//! Shared data (with compare-and-swap) and shared queues, within the calling plugin's
//! `server.plugin_limits` (see `crate::wasm::shared` for what happens at a limit).

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use super::{status, Status};
use crate::wasm::host::HostState;
use crate::wasm::memory;

type Ctx<'a> = Caller<'a, HostState>;

fn get_shared_data(
    mut caller: Ctx<'_>,
    key_ptr: u32,
    key_len: u32,
    ret_ptr: u32,
    ret_len: u32,
    ret_cas: u32,
) -> wasmtime::Result<u32> {
    // The key is looked up where the guest keeps it: no copy per call.
    let found = memory::with_guest_bytes(&mut caller, key_ptr, key_len, |key, state| {
        state.registries.shared_data.get(&state.plugin.vm_id, key)
    });
    let (value, cas) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(Status::NotFound as u32),
        Err(error) => return Ok(Status::from(error) as u32),
    };
    if let Err(error) = memory::write_u32(&mut caller, ret_cas, cas) {
        return Ok(Status::from(error) as u32);
    }
    Ok(status(
        memory::return_bytes(&mut caller, &value, ret_ptr, ret_len)?.map_err(Status::from),
    ))
}

fn set_shared_data(
    mut caller: Ctx<'_>,
    key_ptr: u32,
    key_len: u32,
    value_ptr: u32,
    value_len: u32,
    cas: u32,
) -> u32 {
    status((|| {
        // Key and value are read where the guest keeps them: an existing key is updated
        // with no copy of the key, and its value in place when its length is unchanged.
        memory::with_guest_byte_pair(
            &mut caller,
            (key_ptr, key_len),
            (value_ptr, value_len),
            |key, value, state| {
                let plugin = &state.plugin;
                let result = state.registries.shared_data.set(
                    &plugin.vm_id,
                    key,
                    value,
                    cas,
                    &plugin.limits,
                );
                if result == Err(Status::BadArgument) {
                    state
                        .registries
                        .gateway_metrics
                        .plugin_limit_refusal(&plugin.name, "shared_data_bytes");
                }
                result
            },
        )?
    })())
}

fn register_shared_queue(mut caller: Ctx<'_>, name_ptr: u32, name_len: u32, ret_id: u32) -> u32 {
    status((|| {
        let name = memory::read_string(&mut caller, name_ptr, name_len)?;
        let state = caller.data();
        let events = state.events.clone().ok_or(Status::InternalFailure)?;
        let id = state.registries.shared_data.register_queue(
            &state.plugin.vm_id,
            &name,
            events,
            state.effective_root(),
        );
        let root = caller.data().effective_root();
        caller.data_mut().registered_queues.insert(id, root);
        memory::write_u32(&mut caller, ret_id, id)?;
        Ok(())
    })())
}

fn resolve_shared_queue(
    mut caller: Ctx<'_>,
    vm_ptr: u32,
    vm_len: u32,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> u32 {
    status((|| {
        let vm_id = memory::read_string(&mut caller, vm_ptr, vm_len)?;
        let name = memory::read_string(&mut caller, name_ptr, name_len)?;
        let vm_id = if vm_id.is_empty() {
            caller.data().plugin.vm_id.clone()
        } else {
            vm_id
        };
        let id = caller
            .data()
            .registries
            .shared_data
            .resolve_queue(&vm_id, &name)
            .ok_or(Status::NotFound)?;
        memory::write_u32(&mut caller, ret_id, id)?;
        Ok(())
    })())
}

fn enqueue_shared_queue(mut caller: Ctx<'_>, id: u32, value_ptr: u32, value_len: u32) -> u32 {
    status((|| {
        let value = memory::read(&mut caller, value_ptr, value_len)?;
        let state = caller.data();
        let plugin = &state.plugin;
        let result = state.registries.shared_data.enqueue(
            id,
            Bytes::from(value),
            plugin.limits.shared_queue_length,
        );
        if result == Err(Status::InternalFailure) {
            state
                .registries
                .gateway_metrics
                .plugin_limit_refusal(&plugin.name, "shared_queue_length");
        }
        result
    })())
}

fn dequeue_shared_queue(
    mut caller: Ctx<'_>,
    id: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<u32> {
    match caller.data().registries.shared_data.dequeue(id) {
        Ok(value) => Ok(status(
            memory::return_bytes(&mut caller, &value, ret_ptr, ret_len)?.map_err(Status::from),
        )),
        Err(error) => Ok(error as u32),
    }
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_shared_data", get_shared_data)?;
    linker.func_wrap("env", "proxy_set_shared_data", set_shared_data)?;
    linker.func_wrap("env", "proxy_register_shared_queue", register_shared_queue)?;
    linker.func_wrap("env", "proxy_resolve_shared_queue", resolve_shared_queue)?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", enqueue_shared_queue)?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", dequeue_shared_queue)?;
    Ok(())
}
