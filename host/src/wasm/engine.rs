//! The one wasmtime `Engine`, module compilation (cached on disk by content hash), ABI
//! detection, the import check against what the host provides, and the callbacks a module
//! declares it implements.
//!
//! Compiled modules are mapped from their cache file, not copied into memory: only the pages
//! of code that run, and the metadata read, are resident, and every VM's initial memory is a
//! copy-on-write mapping of the same file. Compiling happens on threads and in an engine
//! that exist only for it, so the compiler's working memory is given back once it is done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

use super::abi;
use super::callbacks::Callbacks;
use super::host::HostState;

/// How often the engine's epoch advances: the unit of per-callback CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-callback CPU deadlines (epoch interruption) are on unless
/// `TOLLGATE_EPOCH_INTERRUPTION=off` — a switch for measuring what they cost, not for
/// production: without it a looping plugin holds its worker forever.
pub fn epochs_enabled() -> bool {
    static ENABLED: LazyLock<bool> = LazyLock::new(|| {
        std::env::var("TOLLGATE_EPOCH_INTERRUPTION").map_or(true, |value| value != "off")
    });
    *ENABLED
}

/// Which proxy-wasm ABI a module was built for, from its `proxy_abi_version_*` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
            Self::V0_2_1 => "0.2.1",
        }
    }
}

/// A compiled module, ready to instantiate.
pub struct CompiledModule {
    pub path: PathBuf,
    pub sha256: String,
    pub abi: AbiVersion,
    /// The callbacks the module declares it implements (its `tollgate.callbacks` section);
    /// all of them when it declares none.
    pub callbacks: Callbacks,
    pub module: Module,
    pub pre: InstancePre<HostState>,
    pub loaded_at: SystemTime,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("abi", &self.abi)
            .field("callbacks", &self.callbacks)
            .finish()
    }
}

pub struct Runtime {
    pub engine: Engine,
    /// The engine's settings without its instance pool: each compilation builds a
    /// throwaway engine from them (code it compiles runs in `engine`).
    compile_config: Config,
    /// Where compiled modules are written and mapped from; `None` when it cannot be created
    /// (modules are then kept in memory).
    cache_dir: Option<PathBuf>,
    linker: Linker<HostState>,
    /// Modules alive in some snapshot, by content hash: re-loading a known module (a hot
    /// swap back to an earlier version, an unchanged file) costs a hash, not a compile.
    loaded: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<CompiledModule>>>,
}

static RUNTIME: LazyLock<Runtime> =
    LazyLock::new(|| Runtime::new(cache_dir()).expect("the wasm engine"));

/// The process-wide runtime; its epoch ticker starts with it.
pub fn runtime() -> &'static Runtime {
    &RUNTIME
}

/// Where compiled modules are cached: `TOLLGATE_CACHE_DIR`, else the user cache folder.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tollgate").join("modules")
}

impl Runtime {
    fn new(cache_dir: PathBuf) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(epochs_enabled());
        // No backtrace setting: by default a trap carries the guest's innermost 20 frames,
        // which trap reports print.
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // A compiled module is resident once per process; keep it to the code. Trap reports
        // name guest functions (from the module's name section), which needs neither the
        // map back to wasm offsets nor native unwind tables (wasmtime walks guest frames by
        // frame pointer).
        config.generate_address_map(false);
        config.native_unwind_info(false);
        // A VM's memory starts as a copy-on-write mapping of the module's data segments
        // (shared by every VM of the module until written), and tables fill in on first use.
        config.memory_init_cow(true);
        config.table_lazy_init(true);
        // `TOLLGATE_WASM_PROFILER=perfmap` names the compiled guest functions for profilers
        // (`/tmp/perf-PID.map`, read by `perf report` and bench/jit_names.py); off by default.
        if std::env::var("TOLLGATE_WASM_PROFILER").is_ok_and(|value| value == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Compiled on demand by one short-lived engine per module (see `compile`); this
        // process-wide engine only loads and runs what those wrote, so it is built without a
        // compiler: none of the compiler's state, and none of its code paged in, for a gateway
        // whose modules all come from the cache. Its settings are the compiling engines'
        // otherwise, which the engine checks on loading each module.
        let mut serving = config.clone();
        serving.enable_compiler(false);
        let cache_dir = match std::fs::create_dir_all(&cache_dir) {
            Ok(()) => Some(cache_dir),
            Err(error) => {
                tracing::warn!(%error, dir = %cache_dir.display(), "compiled-module cache disabled");
                None
            }
        };
        let mut pooling = PoolingAllocationConfig::default();
        // Slots are address space, not memory: what a slot gives back when its VM is
        // dropped is all of it (nothing kept resident for the next VM in the slot).
        pooling
            .total_core_instances(1000)
            .total_memories(1000)
            .total_tables(1000)
            .max_memory_size(512 << 20)
            .linear_memory_keep_resident(0)
            .table_keep_resident(0);
        let mut pooled = serving.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        // The pooling allocator reserves address space up front; where that is refused (a
        // tight `ulimit -v`), fall back to allocating instances on demand.
        let engine = match Engine::new(&pooled) {
            Ok(engine) => engine,
            Err(error) => {
                tracing::warn!(%error, "pooling allocator unavailable; instances are allocated on demand");
                Engine::new(&serving)?
            }
        };
        let mut linker = Linker::new(&engine);
        abi::add_to_linker(&mut linker)?;
        start_epoch_ticker(&engine);
        Ok(Self {
            engine,
            compile_config: config,
            cache_dir,
            linker,
            loaded: Default::default(),
        })
    }

    /// Reads, hashes, compiles and checks a module; off the request path.
    pub fn load(&self, path: &Path) -> Result<Arc<CompiledModule>, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        self.load_bytes(path, &bytes)
    }

    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<CompiledModule>, String> {
        let sha256 = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        if let Some(module) = self.cached(&sha256, path) {
            return Ok(module);
        }
        let module = self.compiled(&sha256, bytes, path)?;
        let abi = detect_abi(&module).map_err(|error| format!("{}: {error}", path.display()))?;
        check_imports(&module).map_err(|error| format!("{}: {error}", path.display()))?;
        let callbacks = Callbacks::declared_in(bytes)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let mut linker = self.linker.clone();
        abi::define_missing_wasi(&mut linker, &module)
            .map_err(|error| format!("{}: {error:#}", path.display()))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|error| format!("{}: cannot link: {error:#}", path.display()))?;
        let module = Arc::new(CompiledModule {
            path: path.to_path_buf(),
            sha256,
            abi,
            callbacks,
            module,
            pre,
            loaded_at: SystemTime::now(),
        });
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, module| module.strong_count() > 0);
        loaded.insert(module.sha256.clone(), Arc::downgrade(&module));
        Ok(module)
    }
}

impl Runtime {
    /// The compiled code of a module: mapped from its cache file when that is there and was
    /// written for this engine, else compiled, written to the cache and mapped from there.
    #[allow(unsafe_code)] // loading compiled code has no safe form; each use says why it is sound
    fn compiled(&self, sha256: &str, bytes: &[u8], path: &Path) -> Result<Module, String> {
        let invalid = |error: wasmtime::Error| {
            format!("{} is not a valid wasm module: {error:#}", path.display())
        };
        let Some(cached) = self.cache_file(sha256) else {
            let code = compile(&self.compile_config, bytes).map_err(invalid)?;
            // SAFETY: the bytes were just serialized by an engine with this engine's settings.
            return unsafe { Module::deserialize(&self.engine, &code) }.map_err(invalid);
        };
        // SAFETY: cache files are never written in place (`write_new_file`), so a mapped
        // file does not change; one from another build or a damaged one fails the
        // engine's header check and is compiled again.
        if let Ok(module) = unsafe { Module::deserialize_file(&self.engine, &cached) } {
            unmap_metadata(&module);
            return Ok(module);
        }
        let code = compile(&self.compile_config, bytes).map_err(invalid)?;
        match write_new_file(&cached, &code) {
            // SAFETY: as above; the file now holds what was just compiled.
            Ok(()) => unsafe { Module::deserialize_file(&self.engine, &cached) }
                .inspect(unmap_metadata)
                .map_err(invalid),
            Err(error) => {
                tracing::warn!(%error, file = %cached.display(), "cannot cache a compiled module; it stays in memory");
                // SAFETY: the bytes were just serialized by an engine with this engine's
                // settings.
                unsafe { Module::deserialize(&self.engine, &code) }.map_err(invalid)
            }
        }
    }

    /// The cache file of a module's code for this engine: named by the module's content
    /// hash and by the engine's compatibility hash (wasmtime version and settings), so that
    /// two builds sharing a cache folder keep their own files.
    fn cache_file(&self, sha256: &str) -> Option<PathBuf> {
        use std::hash::{Hash, Hasher};
        static ENGINE_HASH: OnceLock<u64> = OnceLock::new();
        let engine_hash = *ENGINE_HASH.get_or_init(|| {
            let mut hasher = std::hash::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            // Code compiled before modules were laid out (see `layout`) is compiled again.
            super::layout::SECTION.hash(&mut hasher);
            hasher.finish()
        });
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{engine_hash:016x}.cwasm")))
    }

    /// A module with this content that is still loaded (for a file at `path`).
    fn cached(&self, sha256: &str, path: &Path) -> Option<Arc<CompiledModule>> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let module = loaded.get(sha256)?.upgrade()?;
        if module.path == path {
            Some(module)
        } else {
            // Same code under another name: share the compiled code, keep the new name.
            Some(Arc::new(CompiledModule {
                path: path.to_path_buf(),
                sha256: module.sha256.clone(),
                abi: module.abi,
                callbacks: module.callbacks,
                module: module.module.clone(),
                pre: module.pre.clone(),
                loaded_at: SystemTime::now(),
            }))
        }
    }
}

extern "C" {
    fn madvise(address: *mut std::ffi::c_void, length: usize, advice: i32) -> i32;
    fn posix_fadvise(fd: i32, offset: i64, length: i64, advice: i32) -> i32;
}
const MADV_DONTNEED: i32 = 4;
const POSIX_FADV_DONTNEED: i32 = 4;

/// Lets go of the pages of a mapped module's metadata (trap and name tables, the data
/// segments, the runtime's own description of the module) once loading has read it: a
/// request reads none of it (a trap reads its tables again, the VMs map their data segments
/// on their own), yet the kernel maps 64 KiB around every page read, so all of it stayed
/// resident. The pages stay in the page cache; only this process stops mapping them.
#[allow(unsafe_code)] // a system call on memory the module maps from its cache file
fn unmap_metadata(module: &Module) {
    const PAGE: usize = 4096;
    let image = module.image_range();
    let metadata_start = (module.text().as_ptr_range().end as usize).next_multiple_of(PAGE);
    let end = image.end as usize;
    if metadata_start >= end {
        return;
    }
    // SAFETY: the range lies inside the module's image, a private read-only mapping of its
    // cache file that nothing writes after loading (the runtime applies no relocations to a
    // module it maps from a file), so a page dropped here reads back the same bytes from the
    // file when something reads it again. Only called for modules mapped from a file: an
    // anonymous page dropped would read back as zeros.
    unsafe {
        madvise(
            metadata_start as *mut std::ffi::c_void,
            end - metadata_start,
            MADV_DONTNEED,
        );
    }
}

/// Compiles a module to its serialized code, in an engine and on threads that exist only
/// for this: the compiler keeps its working buffers in the engine and the allocator keeps
/// freed memory with the thread that freed it, so both go when they end, and the allocator
/// is then asked to give that memory back.
fn compile(config: &Config, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
    // Hot functions first, where the module's build named them (see `layout`); a module the
    // rewrite cannot read is compiled as it came, and the engine judges it.
    let laid_out = super::layout::hot_first(bytes).unwrap_or_else(|error| {
        tracing::warn!(%error, "the module's function layout is not applied");
        None
    });
    let bytes = laid_out.as_deref().unwrap_or(bytes);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let compiled = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tollgate-compile-{i}"))
        .build_scoped(
            |thread| thread.run(),
            |pool| pool.install(|| Engine::new(config)?.precompile_module(bytes)),
        )
        .map_err(wasmtime::Error::from)
        .and_then(|compiled| compiled);
    crate::allocator::release_freed_memory();
    compiled
}

/// Writes a file under a fresh name, then renames it into place: a file someone has
/// mapped is replaced, never changed.
fn write_new_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let temporary = PathBuf::from(temporary);
    let written =
        write_uncached(&temporary, contents).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Writes `contents` to a new file and leaves none of it in the page cache. The pages a
/// large write leaves there are large blocks (folios), and the kernel maps a whole block into
/// a process that reads one page of it: the whole of a module's code, the cold part its
/// layout put last included (see `layout`). Read back from the disk instead, the file comes
/// in small blocks, and only the code the VMs run, with its neighbours, is mapped.
#[allow(unsafe_code)] // a system call on a file this function opened
fn write_uncached(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut file = std::fs::File::create(path)?;
    file.write_all(contents)?;
    // Dirty pages cannot be dropped: written out first.
    file.sync_data()?;
    // SAFETY: the descriptor is the open file's own; the advice changes no memory of this
    // process, only what the page cache keeps of the file (nothing maps it yet). Its result
    // is only advice taken or not.
    unsafe { posix_fadvise(file.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    Ok(())
}

/// Envoy's rule: the newest `proxy_abi_version_*` export wins; none is an error.
fn detect_abi(module: &Module) -> Result<AbiVersion, String> {
    let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
    let version = if exports.contains(&"proxy_abi_version_0_2_1") {
        AbiVersion::V0_2_1
    } else if exports.contains(&"proxy_abi_version_0_2_0") {
        AbiVersion::V0_2_0
    } else if exports.contains(&"proxy_abi_version_0_1_0") {
        AbiVersion::V0_1_0
    } else {
        let other: Vec<&&str> = exports
            .iter()
            .filter(|name| name.starts_with("proxy_abi_version_"))
            .collect();
        return Err(if other.is_empty() {
            "no proxy-wasm ABI version export (proxy_abi_version_0_2_1, _0_2_0 or _0_1_0); is this a proxy-wasm module?".to_string()
        } else {
            format!("unsupported proxy-wasm ABI {other:?}; supported: 0.2.1, 0.2.0, 0.1.0")
        });
    };
    if !exports.contains(&"memory") {
        return Err("the module exports no memory".to_string());
    }
    if !exports.contains(&"proxy_on_memory_allocate") && !exports.contains(&"malloc") {
        return Err(
            "the module exports no allocator (proxy_on_memory_allocate or malloc)".to_string(),
        );
    }
    Ok(version)
}

/// Every `env` import must be a host function the ABI defines, every other import a WASI
/// preview-1 function (under `wasi_snapshot_preview1` or `wasi_unstable`); a name outside
/// those fails now, not on the first request.
fn check_imports(module: &Module) -> Result<(), String> {
    let known_env: std::collections::HashSet<&str> = abi::HOST_FUNCTIONS
        .iter()
        .copied()
        .chain(["proxy_continue_request", "proxy_continue_response"])
        .collect();
    let unknown: Vec<String> = module
        .imports()
        .filter(|import| match import.module() {
            "env" => !known_env.contains(import.name()),
            module => !abi::WASI_MODULES.contains(&module),
        })
        .map(|import| format!("{}.{}", import.module(), import.name()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "imports functions the host does not provide: {}",
            unknown.join(", ")
        ))
    }
}

fn start_epoch_ticker(engine: &Engine) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let engine = engine.weak();
        let _ = std::thread::Builder::new()
            .name("tollgate-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(wat: &str) -> Result<Arc<CompiledModule>, String> {
        runtime().load_bytes(Path::new("test.wat"), wat.as_bytes())
    }

    #[test]
    fn the_serving_engine_compiles_nothing_and_runs_what_was_compiled_for_it() {
        // It has no compiler: a gateway whose modules come from the cache keeps none in memory.
        let error = wasmtime::Module::new(&runtime().engine, "(module)")
            .expect_err("the serving engine has no compiler");
        assert!(
            format!("{error:#}").contains("not configured with a compiler"),
            "{error:#}"
        );
        // What the compiling engines write, it loads.
        let module = load(
            r#"(module (memory (export "memory") 1)
                 (func (export "proxy_abi_version_0_2_1"))
                 (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0))"#,
        )
        .expect("compiled by a compiling engine, loaded by the serving one");
        assert!(Engine::same(module.module.engine(), &runtime().engine));
    }

    #[test]
    fn abi_is_detected_by_export() {
        let module = load(
            r#"(module (memory (export "memory") 1)
                 (func (export "malloc") (param i32) (result i32) i32.const 0)
                 (func (export "proxy_abi_version_0_2_0")))"#,
        )
        .unwrap();
        assert_eq!(module.abi, AbiVersion::V0_2_0);
        assert_eq!(module.sha256.len(), 64);
    }

    #[test]
    fn modules_without_or_with_unknown_abi_are_rejected() {
        let none = load(r#"(module (memory (export "memory") 1))"#).unwrap_err();
        assert!(none.contains("no proxy-wasm ABI version export"), "{none}");
        let unknown = load(
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_9_9_9")))"#,
        )
        .unwrap_err();
        assert!(unknown.contains("unsupported proxy-wasm ABI"), "{unknown}");
    }

    #[test]
    fn unknown_imports_are_named() {
        let error = load(
            r#"(module (import "env" "proxy_teleport" (func)) (memory (export "memory") 1)
                 (func (export "malloc") (param i32) (result i32) i32.const 0)
                 (func (export "proxy_abi_version_0_2_1")))"#,
        )
        .unwrap_err();
        assert!(error.contains("env.proxy_teleport"), "{error}");
    }

    #[test]
    fn wasi_is_provided_under_both_module_names() {
        let module = load(
            r#"(module
                 (import "wasi_unstable" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (import "wasi_unstable" "proc_exit" (func (param i32)))
                 (import "wasi_unstable" "path_open"
                   (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
                 (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "malloc") (param i32) (result i32) i32.const 0)
                 (func (export "proxy_abi_version_0_2_1")))"#,
        );
        assert!(module.is_ok(), "{:?}", module.err());
        let other = load(
            r#"(module (import "wasi_preview9" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (func (export "malloc") (param i32) (result i32) i32.const 0)
                 (func (export "proxy_abi_version_0_2_1")))"#,
        )
        .unwrap_err();
        assert!(other.contains("wasi_preview9.fd_write"), "{other}");
    }

    const MINIMAL: &str = r#"(module (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 0)
        (func (export "proxy_abi_version_0_2_1")))"#;

    fn cache_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn is_mapped(file: &Path) -> bool {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .any(|line| line.ends_with(&*file.to_string_lossy()))
    }

    #[test]
    fn compiled_code_is_mapped_from_the_cache_and_a_damaged_file_is_replaced() {
        use std::os::unix::fs::MetadataExt;
        let dir =
            std::env::temp_dir().join(format!("tollgate-engine-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = Runtime::new(dir.clone()).unwrap();
        let path = Path::new("minimal.wat");

        let module = runtime.load_bytes(path, MINIMAL.as_bytes()).unwrap();
        let files = cache_files(&dir);
        assert_eq!(files.len(), 1, "{files:?}");
        let cached = files[0].clone();
        assert_eq!(cached.extension().unwrap(), "cwasm");
        assert!(
            is_mapped(&cached),
            "the code runs from {}",
            cached.display()
        );
        let inode = std::fs::metadata(&cached).unwrap().ino();
        drop(module);

        // Loaded again once nothing holds it: mapped from the same file, nothing compiled.
        let module = runtime.load_bytes(path, MINIMAL.as_bytes()).unwrap();
        assert_eq!(cache_files(&dir), std::slice::from_ref(&cached));
        assert_eq!(std::fs::metadata(&cached).unwrap().ino(), inode);
        drop(module);

        // A damaged file fails the engine's check: compiled again, under a new file that
        // replaces it.
        std::fs::write(&cached, b"not compiled code").unwrap();
        let module = runtime.load_bytes(path, MINIMAL.as_bytes()).unwrap();
        assert_eq!(module.abi, AbiVersion::V0_2_1);
        assert_eq!(
            cache_files(&dir),
            std::slice::from_ref(&cached),
            "no temporary file is left"
        );
        assert_ne!(std::fs::metadata(&cached).unwrap().ino(), inode);
        assert!(is_mapped(&cached));
        drop(module);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_wasm_is_a_clear_error() {
        let error = runtime()
            .load_bytes(Path::new("junk.wasm"), b"\0asm\x01\0\0\0garbage")
            .unwrap_err();
        assert!(
            error.contains("junk.wasm is not a valid wasm module"),
            "{error}"
        );
    }

    #[test]
    fn a_module_declaring_callbacks_badly_is_refused() {
        let module = MINIMAL.replace(
            "(module ",
            r#"(module (@custom "tollgate.callbacks" "\01\02") "#,
        );
        let error = runtime()
            .load_bytes(Path::new("bad-section.wat"), module.as_bytes())
            .unwrap_err();
        assert_eq!(
            error,
            "bad-section.wat: the tollgate.callbacks section holds 2 bytes, not 1"
        );
        let module = MINIMAL.replace(
            "(module ",
            r#"(module (@custom "tollgate.callbacks" "\09") "#,
        );
        let module = runtime()
            .load_bytes(Path::new("declared.wat"), module.as_bytes())
            .unwrap();
        assert_eq!(module.callbacks, Callbacks::from_bits(9));
    }
}
