//! Every bundled plugin names the functions its VMs run (`tollgate_sdk::layout!`, written by
//! bench/layout.sh), and the gateway places them first when it compiles the module
//! (host/src/wasm/layout.rs). A list goes stale as its plugin changes: it then places fewer
//! functions first, and the plugin's code is mapped into the gateway's memory whole again.
//! These tests fail before that goes far, so that the lists are written anew.

use tollgate::wasm::layout::{hot_first, listed_names, plain_name, SECTION};
use tollgate_tests::bundled;
use wasmparser::{KnownCustom, Name, Parser, Payload, TypeRef};

/// What a module names: its functions defined (as the lists give them, in index order) and
/// its layout list, if it has one.
struct Names {
    defined: Vec<String>,
    listed: Option<Vec<String>>,
}

fn read(bytes: &[u8]) -> Names {
    let mut imported = 0;
    let mut functions = Vec::new();
    let mut listed = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::ImportSection(imports) => {
                imported = imports
                    .into_imports()
                    .filter(|import| matches!(import.as_ref().unwrap().ty, TypeRef::Func(_)))
                    .count();
            }
            Payload::CustomSection(section) if section.name() == SECTION => {
                let text = String::from_utf8(section.data().to_vec()).unwrap();
                listed = Some(listed_names(&text).map(str::to_string).collect());
            }
            Payload::CustomSection(section) => {
                let KnownCustom::Name(subsections) = section.as_known() else {
                    continue;
                };
                for subsection in subsections {
                    if let Name::Function(map) = subsection.unwrap() {
                        functions.extend(map.into_iter().map(|n| plain_name(n.unwrap().name)));
                    }
                }
            }
            _ => {}
        }
    }
    Names {
        defined: functions.split_off(imported),
        listed,
    }
}

fn bundled_modules() -> impl Iterator<Item = (&'static str, Vec<u8>)> {
    bundled::ALL
        .iter()
        .map(|(name, path)| (*name, std::fs::read(path).unwrap()))
}

#[test]
fn every_bundled_plugin_lists_functions_its_module_has() {
    for (name, bytes) in bundled_modules() {
        let names = read(&bytes);
        let listed = names.listed.unwrap_or_else(|| {
            panic!("{name}: no {SECTION} section (tollgate_sdk::layout! in src/plugin.rs)")
        });
        assert!(
            listed.len() >= 20,
            "{name}: only {} functions listed",
            listed.len()
        );
        let missing: Vec<&String> = listed
            .iter()
            .filter(|listed| !names.defined.contains(listed))
            .collect();
        assert!(
            missing.len() * 10 <= listed.len(),
            "{name}: {} of the {} functions plugins/{name}/layout.txt lists are no longer in \
             the module (run bench/layout.sh), e.g. {:?}",
            missing.len(),
            listed.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[test]
fn a_bundled_plugin_is_compiled_with_its_listed_functions_first() {
    for (name, bytes) in bundled_modules() {
        let original = read(&bytes);
        let listed = original.listed.unwrap();
        let present = listed
            .iter()
            .filter(|listed| original.defined.contains(listed))
            .count();
        let laid_out = hot_first(&bytes)
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the layout moved nothing"));
        wasmparser::validate(&laid_out).unwrap_or_else(|error| panic!("{name}: {error}"));
        let defined = read(&laid_out).defined;
        let first_unlisted = defined
            .iter()
            .position(|function| !listed.contains(function))
            .unwrap_or(defined.len());
        assert!(
            first_unlisted >= present,
            "{name}: {first_unlisted} functions first, {present} listed"
        );
        assert!(
            defined[first_unlisted..]
                .iter()
                .all(|function| !listed.contains(function)),
            "{name}: a listed function after one not listed"
        );
    }
}
