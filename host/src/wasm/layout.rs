//! A module's functions laid out hot first, before it is compiled.
//!
//! The engine places compiled functions in the order of the module's function index, and the
//! gateway maps the compiled code from its cache file, where the kernel maps every cached
//! page of a 64 KiB window around a page a VM runs. A plugin's start and its requests run a
//! quarter of its code at most (the bundled chain: 508 of 2,053 KiB at start and over 400
//! requests, of which the requests alone 92 KiB), but that code is spread over nearly every
//! window of the module, so all of the code became resident.
//!
//! A module can name the functions it runs in a custom section, [`SECTION`]: one function
//! name per line, in the order to place them, as the build of the bundled plugins writes it
//! from a profile (bench/layout.sh). The named functions then come first, the others after
//! them in their own order, and the cold code is never mapped. Names are compared demangled
//! and without their hashes, so a list stays good across most rebuilds of its plugin; a name
//! the module does not have is skipped, and a module without the section is compiled as it
//! came. Nothing else changes: the module runs the same, and Envoy, which ignores custom
//! sections, runs the file as it was built.
//!
//! For the kernel to map only the hot part, the cache file must come into the page cache in
//! small blocks: the engine writes it without keeping it there (`engine::write_uncached`),
//! so that it is read back from the disk, as it is at every later start.

use std::collections::HashMap;

use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{KnownCustom, Name, Parser, Payload, TypeRef};

/// The custom section with the names of the functions to place first.
pub const SECTION: &str = "tollgate.layout";

/// `bytes` with the functions its [`SECTION`] names placed first; `None` when the module has
/// no such section or its order is already that one. An error for a module the rewrite
/// cannot read (the caller compiles the module as it came).
pub fn hot_first(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let Some(plan) = plan(bytes).map_err(|error| error.to_string())? else {
        return Ok(None);
    };
    let mut module = wasm_encoder::Module::new();
    reencode::utils::parse_core_module(&mut Reorder(plan), &mut module, Parser::new(0), bytes)
        .map_err(|error| format!("{error:?}"))?;
    Ok(Some(module.finish()))
}

/// Where each function goes, and the bodies to write there.
struct Plan<'a> {
    /// Functions the module imports: their indices come first and stay.
    imported: u32,
    /// New index of each function, by old index.
    new_index: Vec<u32>,
    /// Old index of each defined function, by new position among the defined ones.
    order: Vec<u32>,
    /// The defined functions' bodies, by old position among the defined ones.
    bodies: Vec<wasmparser::FunctionBody<'a>>,
}

fn plan(bytes: &[u8]) -> Result<Option<Plan<'_>>, wasmparser::BinaryReaderError> {
    let mut imported = 0u32;
    let mut defined = 0u32;
    let mut bodies = Vec::new();
    let mut names: HashMap<String, Vec<u32>> = HashMap::new();
    let mut wanted: Option<String> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if matches!(import?.ty, TypeRef::Func(_)) {
                        imported += 1;
                    }
                }
            }
            Payload::FunctionSection(functions) => defined = functions.count(),
            Payload::CodeSectionEntry(body) => bodies.push(body),
            Payload::CustomSection(section) if section.name() == SECTION => {
                wanted = Some(String::from_utf8_lossy(section.data()).into_owned());
            }
            Payload::CustomSection(section) => {
                let KnownCustom::Name(subsections) = section.as_known() else {
                    continue;
                };
                for subsection in subsections {
                    let Name::Function(map) = subsection? else {
                        continue;
                    };
                    for naming in map {
                        let naming = naming?;
                        names
                            .entry(plain_name(naming.name))
                            .or_default()
                            .push(naming.index);
                    }
                }
            }
            _ => {}
        }
    }
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    let total = imported + defined;
    let mut placed = vec![false; total as usize];
    let mut order = Vec::with_capacity(defined as usize);
    for name in listed_names(&wanted) {
        for &index in names.get(name).map(Vec::as_slice).unwrap_or_default() {
            if index >= imported && index < total && !placed[index as usize] {
                placed[index as usize] = true;
                order.push(index);
            }
        }
    }
    order.extend((imported..total).filter(|&index| !placed[index as usize]));
    if order.iter().copied().eq(imported..total) {
        return Ok(None);
    }
    let mut new_index: Vec<u32> = (0..total).collect();
    for (position, &old) in order.iter().enumerate() {
        new_index[old as usize] = imported + position as u32;
    }
    Ok(Some(Plan {
        imported,
        new_index,
        order,
        bodies,
    }))
}

/// The function names a [`SECTION`]'s text lists, in order: one a line, blank lines and
/// `#` comments left out.
pub fn listed_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// A function's name as the lists give it: demangled, without the hash of a legacy Rust
/// symbol or the crate disambiguators of a v0 one (other names as they are).
pub fn plain_name(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_string(),
    }
}

/// Re-encodes a module with its functions moved as [`Plan`] says: every reference to a
/// function (calls, `ref.func`, tables' elements, exports, the start function, the names)
/// follows it.
struct Reorder<'a>(Plan<'a>);

impl Reencode for Reorder<'_> {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error> {
        Ok(self.0.new_index.get(func as usize).copied().unwrap_or(func))
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        let types = section.into_iter().collect::<Result<Vec<u32>, _>>()?;
        for position in 0..self.0.order.len() {
            let old = self.0.order[position];
            let ty = types[(old - self.0.imported) as usize];
            functions.function(self.type_index(ty)?);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        _section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error> {
        for position in 0..self.0.order.len() {
            let old = self.0.order[position];
            let body = self.0.bodies[(old - self.0.imported) as usize].clone();
            self.parse_function_body(code, body)?;
        }
        Ok(())
    }

    fn parse_custom_name_subsection(
        &mut self,
        names: &mut wasm_encoder::NameSection,
        section: Name<'_>,
    ) -> Result<(), reencode::Error> {
        // Name maps must stay sorted by index: sort them after moving the functions.
        let is_local = matches!(section, Name::Local(_));
        match section {
            Name::Function(map) => {
                let mut moved = Vec::new();
                for naming in map {
                    let naming = naming?;
                    moved.push((self.function_index(naming.index)?, naming.name));
                }
                moved.sort_unstable_by_key(|(index, _)| *index);
                let mut map = wasm_encoder::NameMap::new();
                for (index, name) in moved {
                    map.append(index, name);
                }
                names.functions(&map);
            }
            Name::Local(map) | Name::Label(map) => {
                let mut moved = Vec::new();
                for naming in map {
                    let naming = naming?;
                    let inner = reencode::utils::name_map(naming.names, Ok)?;
                    moved.push((self.function_index(naming.index)?, inner));
                }
                moved.sort_unstable_by_key(|(index, _)| *index);
                let mut map = wasm_encoder::IndirectNameMap::new();
                for (index, inner) in &moved {
                    map.append(*index, inner);
                }
                if is_local {
                    names.locals(&map);
                } else {
                    names.labels(&map);
                }
            }
            other => reencode::utils::parse_custom_name_subsection(self, names, other)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module of three functions that call one another, with names and a layout that
    /// puts the last first.
    fn module(layout: &str) -> Vec<u8> {
        let text = format!(
            r#"(module
                (import "env" "log" (func $log (param i32)))
                (table 2 funcref)
                (elem (i32.const 0) $first $third)
                (func $first (export "first") (result i32) (call $second) (i32.const 1) (i32.add))
                (func $second (result i32) (call $log (i32.const 7)) (i32.const 2))
                (func $third (export "third") (result i32)
                    (call_indirect (result i32) (i32.const 0)) (call $second) (i32.add))
                (@custom "{SECTION}" "{layout}")
            )"#
        );
        wat::parse_str(text).expect("a valid module")
    }

    fn function_names(bytes: &[u8]) -> Vec<(u32, String)> {
        let mut found = Vec::new();
        for payload in Parser::new(0).parse_all(bytes) {
            if let Payload::CustomSection(section) = payload.unwrap() {
                if let KnownCustom::Name(subsections) = section.as_known() {
                    for subsection in subsections {
                        if let Name::Function(map) = subsection.unwrap() {
                            for naming in map {
                                let naming = naming.unwrap();
                                found.push((naming.index, naming.name.to_string()));
                            }
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn the_named_functions_come_first_and_every_reference_follows_them() {
        let original = module("third\\nnone-such\\n");
        let laid_out = hot_first(&original).unwrap().expect("a new order");
        wasmparser::validate(&laid_out).expect("still a valid module");
        assert_eq!(
            function_names(&laid_out),
            [(0, "log"), (1, "third"), (2, "first"), (3, "second")]
                .map(|(i, n)| (i, n.to_string()))
        );
        // Same behaviour: the exports call what they called before.
        let engine = wasmtime::Engine::default();
        let run = |bytes: &[u8]| {
            let module = wasmtime::Module::new(&engine, bytes).unwrap();
            let mut store = wasmtime::Store::new(&engine, Vec::new());
            let log = wasmtime::Func::wrap(
                &mut store,
                |mut caller: wasmtime::Caller<'_, Vec<i32>>, value: i32| {
                    caller.data_mut().push(value);
                },
            );
            let instance = wasmtime::Instance::new(&mut store, &module, &[log.into()]).unwrap();
            let call = |store: &mut wasmtime::Store<Vec<i32>>, name: &str| {
                let f = instance
                    .get_typed_func::<(), i32>(&mut *store, name)
                    .unwrap();
                f.call(&mut *store, ()).unwrap()
            };
            let results = (call(&mut store, "first"), call(&mut store, "third"));
            (results, store.into_data())
        };
        assert_eq!(run(&original), run(&laid_out));
        assert_eq!(run(&laid_out), ((3, 5), vec![7, 7, 7]));
    }

    #[test]
    fn a_module_without_a_layout_or_already_in_order_is_left_as_it_is() {
        let plain = wat::parse_str("(module (func $a) (func $b))").unwrap();
        assert_eq!(hot_first(&plain), Ok(None));
        assert_eq!(hot_first(&module("first\\nsecond\\nthird")), Ok(None));
        assert_eq!(hot_first(&module("")), Ok(None));
    }

    #[test]
    fn names_are_compared_without_their_hashes() {
        assert_eq!(
            plain_name("_ZN10proxy_wasm9hostcalls13add_map_value17h43d54b4ba5da70edE"),
            "proxy_wasm::hostcalls::add_map_value"
        );
        assert_eq!(
            plain_name("_RNvNtCsdHhIpgkcIfN_4core3fmt5write"),
            "core::fmt::write"
        );
        assert_eq!(
            plain_name("proxy_on_request_headers"),
            "proxy_on_request_headers"
        );
    }
}
