//! The guest-memory accessors (`tollgate::wasm::memory`) against a real wasmtime linear
//! memory, with the pointers and lengths a hostile plugin could pass: anywhere, near the end
//! of its memory, near `u32::MAX` where `ptr + len` overflows; and a guest allocator that
//! answers with any pointer, null, or a trap.
//!
//! Each input is a list of accesses made from inside a host function, as the ABI's host
//! functions make them. A shadow copy of the memory says what each access must do: an
//! access in bounds reads or writes exactly its bytes; one out of bounds is a
//! `MemoryError` and changes nothing; nothing panics. After every access the real memory
//! must equal the shadow.

#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tollgate::wasm::host::{HostState, PluginIdentity};
use tollgate::wasm::memory::{self, MemoryError, MemoryResult};
use wasmtime::{Caller, Engine, Instance, Linker, Module, Store, Val};

const PAGE: usize = 64 * 1024;
const MAX_PAGES: usize = 4;

/// One memory (1 page, growable to 4), an allocator that returns what the input chose, and
/// `run`, which calls back into the host where the accesses happen.
const GUEST: &str = r#"
(module
  (import "fuzz" "access" (func $access))
  (memory (export "memory") 1 4)
  (global $allocation (export "allocation") (mut i32) (i32.const 0))
  (global $fail (export "fail_allocation") (mut i32) (i32.const 0))
  (func (export "malloc") (param i32) (result i32)
    (if (global.get $fail) (then unreachable))
    (global.get $allocation))
  (func (export "run") (call $access)))
"#;

static ENGINE: LazyLock<(Engine, Module)> = LazyLock::new(|| {
    let engine = Engine::default();
    let module = Module::new(&engine, GUEST).expect("the guest module compiles");
    (engine, module)
});

/// Where a pointer or length points, relative to what matters at the time of the access.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Base {
    Zero,
    MemoryEnd,
    U32Max,
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Value {
    base: Base,
    offset: i16,
}

impl Value {
    fn resolve(self, memory_size: usize) -> u32 {
        let base = match self.base {
            Base::Zero => 0,
            Base::MemoryEnd => memory_size as u32,
            Base::U32Max => u32::MAX,
            Base::Raw(raw) => raw,
        };
        base.wrapping_add_signed(i32::from(self.offset))
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Allocation {
    At(Value),
    Trap,
}

#[derive(Arbitrary, Debug, Clone)]
enum Access {
    Read {
        ptr: Value,
        len: Value,
    },
    ReadString {
        ptr: Value,
        len: Value,
    },
    Write {
        ptr: Value,
        bytes: Vec<u8>,
    },
    WriteU32 {
        ptr: Value,
        value: u32,
    },
    WriteU64 {
        ptr: Value,
        value: u64,
    },
    /// A host function's result handed to the guest: allocated with the guest's allocator,
    /// its pointer and length stored at `return_ptr` and `return_len`.
    ReturnBytes {
        bytes: Vec<u8>,
        allocation: Allocation,
        return_ptr: Value,
        return_len: Value,
    },
    /// The guest grows its memory between host calls.
    Grow {
        pages: u8,
    },
}

/// An access with its pointers resolved, as the host function receives it.
#[derive(Debug, Clone)]
enum Resolved {
    Read(u32, u32),
    ReadString(u32, u32),
    Write(u32, Vec<u8>),
    WriteU32(u32, u32),
    WriteU64(u32, u64),
    ReturnBytes(Vec<u8>, u32, u32),
}

/// What the accessor answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Bytes(MemoryResult<Vec<u8>>),
    Text(MemoryResult<String>),
    Done(MemoryResult<()>),
}

/// The access for the host function to make, and its answer.
#[derive(Default)]
struct Exchange {
    access: Option<Resolved>,
    outcome: Option<Outcome>,
}

fn host_access(caller: &mut Caller<'_, HostState>, access: Resolved) -> wasmtime::Result<Outcome> {
    Ok(match access {
        Resolved::Read(ptr, len) => Outcome::Bytes(memory::read(caller, ptr, len)),
        Resolved::ReadString(ptr, len) => Outcome::Text(memory::read_string(caller, ptr, len)),
        Resolved::Write(ptr, bytes) => Outcome::Done(memory::write(caller, ptr, &bytes)),
        Resolved::WriteU32(ptr, value) => Outcome::Done(memory::write_u32(caller, ptr, value)),
        Resolved::WriteU64(ptr, value) => Outcome::Done(memory::write_u64(caller, ptr, value)),
        Resolved::ReturnBytes(bytes, return_ptr, return_len) => Outcome::Done(
            memory::return_bytes(caller, &bytes, return_ptr, return_len)?,
        ),
    })
}

/// The expected effect of each accessor on a plain copy of the memory.
struct Shadow(Vec<u8>);

impl Shadow {
    fn range(&self, ptr: u32, len: usize) -> MemoryResult<std::ops::Range<usize>> {
        let end = u64::from(ptr) + len as u64;
        if end > self.0.len() as u64 {
            return Err(MemoryError);
        }
        Ok(ptr as usize..end as usize)
    }

    fn read(&self, ptr: u32, len: u32) -> MemoryResult<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        Ok(self.0[self.range(ptr, len as usize)?].to_vec())
    }

    fn write(&mut self, ptr: u32, bytes: &[u8]) -> MemoryResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let range = self.range(ptr, bytes.len())?;
        self.0[range].copy_from_slice(bytes);
        Ok(())
    }

    /// `None`: the guest allocator traps, and so does the host call.
    fn return_bytes(
        &mut self,
        bytes: &[u8],
        allocation: Option<u32>,
        return_ptr: u32,
        return_len: u32,
    ) -> Option<MemoryResult<()>> {
        if bytes.is_empty() {
            return Some(
                self.write(return_ptr, &0u32.to_le_bytes())
                    .and_then(|()| self.write(return_len, &0u32.to_le_bytes())),
            );
        }
        let guest_ptr = allocation?;
        if guest_ptr == 0 {
            return Some(Err(MemoryError));
        }
        // The result and the places for its pointer and length are all checked before
        // anything is written: a bad place leaves the memory as it was.
        let checked = self
            .range(guest_ptr, bytes.len())
            .and_then(|_| self.range(return_ptr, 4))
            .and_then(|_| self.range(return_len, 4));
        if let Err(error) = checked {
            return Some(Err(error));
        }
        Some(
            self.write(guest_ptr, bytes)
                .and_then(|()| self.write(return_ptr, &guest_ptr.to_le_bytes()))
                .and_then(|()| self.write(return_len, &(bytes.len() as u32).to_le_bytes())),
        )
    }
}

fn run(accesses: Vec<Access>) {
    let (engine, module) = &*ENGINE;
    let identity = Arc::new(PluginIdentity {
        name: "fuzz".into(),
        vm_id: String::new(),
        root_id: String::new(),
        vm_configuration: Default::default(),
        env: Vec::new(),
        clusters: Default::default(),
        limits: Default::default(),
        node: Default::default(),
        registries: Default::default(),
    });
    let mut store = Store::new(engine, HostState::new(identity, MAX_PAGES * PAGE));
    store.limiter(|state| &mut state.limits);

    let exchange = Arc::new(Mutex::new(Exchange::default()));
    let mut linker = Linker::new(engine);
    let shared = exchange.clone();
    linker
        .func_wrap(
            "fuzz",
            "access",
            move |mut caller: Caller<'_, HostState>| -> wasmtime::Result<()> {
                let access = shared.lock().unwrap().access.take().expect("an access");
                let outcome = host_access(&mut caller, access)?;
                shared.lock().unwrap().outcome = Some(outcome);
                Ok(())
            },
        )
        .expect("define the host function");
    let instance: Instance = linker
        .instantiate(&mut store, module)
        .expect("instantiate the guest");
    let memory = instance
        .get_memory(&mut store, "memory")
        .expect("the memory");
    let guest_run = instance
        .get_typed_func::<(), ()>(&mut store, "run")
        .expect("run");
    let allocation = instance
        .get_global(&mut store, "allocation")
        .expect("allocation");
    let fail_allocation = instance
        .get_global(&mut store, "fail_allocation")
        .expect("fail_allocation");

    let mut shadow = Shadow(memory.data(&store).to_vec());
    for access in accesses.into_iter().take(64) {
        let size = memory.data_size(&store);
        let (resolved, expected) = match access {
            Access::Grow { pages } => {
                let grown = memory.grow(&mut store, u64::from(pages % 8));
                let pages_now = memory.data_size(&store) / PAGE;
                match grown {
                    Ok(_) => assert!(pages_now <= MAX_PAGES, "grew past the maximum"),
                    Err(_) => assert_eq!(memory.data_size(&store), size, "a failed grow"),
                }
                shadow.0.resize(memory.data_size(&store), 0);
                assert!(memory.data(&store) == shadow.0.as_slice());
                continue;
            }
            Access::Read { ptr, len } => {
                let (ptr, len) = (ptr.resolve(size), len.resolve(size));
                (
                    Resolved::Read(ptr, len),
                    Some(Outcome::Bytes(shadow.read(ptr, len))),
                )
            }
            Access::ReadString { ptr, len } => {
                let (ptr, len) = (ptr.resolve(size), len.resolve(size));
                let text = shadow
                    .read(ptr, len)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
                (Resolved::ReadString(ptr, len), Some(Outcome::Text(text)))
            }
            Access::Write { ptr, bytes } => {
                let ptr = ptr.resolve(size);
                let expected = shadow.write(ptr, &bytes);
                (Resolved::Write(ptr, bytes), Some(Outcome::Done(expected)))
            }
            Access::WriteU32 { ptr, value } => {
                let ptr = ptr.resolve(size);
                let expected = shadow.write(ptr, &value.to_le_bytes());
                (
                    Resolved::WriteU32(ptr, value),
                    Some(Outcome::Done(expected)),
                )
            }
            Access::WriteU64 { ptr, value } => {
                let ptr = ptr.resolve(size);
                let expected = shadow.write(ptr, &value.to_le_bytes());
                (
                    Resolved::WriteU64(ptr, value),
                    Some(Outcome::Done(expected)),
                )
            }
            Access::ReturnBytes {
                bytes,
                allocation: chosen,
                return_ptr,
                return_len,
            } => {
                let (return_ptr, return_len) = (return_ptr.resolve(size), return_len.resolve(size));
                let guest_ptr = match chosen {
                    Allocation::At(value) => Some(value.resolve(size)),
                    Allocation::Trap => None,
                };
                allocation
                    .set(&mut store, Val::I32(guest_ptr.unwrap_or(0) as i32))
                    .expect("set the allocation");
                fail_allocation
                    .set(&mut store, Val::I32(i32::from(guest_ptr.is_none())))
                    .expect("set the allocator failure");
                let expected = shadow
                    .return_bytes(&bytes, guest_ptr, return_ptr, return_len)
                    .map(Outcome::Done);
                (
                    Resolved::ReturnBytes(bytes, return_ptr, return_len),
                    expected,
                )
            }
        };
        let described = format!("{resolved:?}");
        exchange.lock().unwrap().access = Some(resolved);
        let called = guest_run.call(&mut store, ());
        let outcome = exchange.lock().unwrap().outcome.take();
        match expected {
            Some(expected) => {
                called.unwrap_or_else(|trap| panic!("{described} trapped: {trap:?}"));
                assert_eq!(outcome, Some(expected), "{described}");
            }
            None => assert!(
                called.is_err() && outcome.is_none(),
                "{described}: a trapping allocator must fail the host call"
            ),
        }
        assert!(
            memory.data(&store) == shadow.0.as_slice(),
            "{described}: the memory differs from what the access should have done"
        );
    }
}

fuzz_target!(|accesses: Vec<Access>| run(accesses));
