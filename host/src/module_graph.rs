//! The top-level modules depend on each other in one direction only, and so do the files of
//! `config/`: a test reads every `crate::NAME` reference in each top-level module's sources
//! (and every `super::NAME` in each policy file) and fails on a cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Source files of each top-level module (`lib.rs` and `main.rs` wire them and are left out).
fn top_level_modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("the source folder").flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut files = Vec::new();
            collect_rust_files(&path, &mut files);
            modules.entry(name).or_insert_with(Vec::new).extend(files);
        } else if path.extension().is_some_and(|ext| ext == "rs") && name != "lib" && name != "main"
        {
            modules.entry(name).or_insert_with(Vec::new).push(path);
        }
    }
    modules
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a module folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The modules `source` names as `crate::NAME` (in `use` lines, paths and `crate::{a, b}`
/// groups), comments left out.
fn referenced_modules(source: &str) -> BTreeSet<String> {
    referenced_after(source, "crate::")
}

/// The names `source` reaches through `prefix` (`crate::` or `super::`).
fn referenced_after(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_ident = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':');
            rest = &rest[at + prefix.len()..];
            if preceded_by_ident {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                names.extend(
                    group
                        .split(',')
                        .filter_map(|item| leading_ident(item.trim())),
                );
            } else if let Some(name) = leading_ident(rest) {
                names.insert(name);
            }
        }
    }
    names
}

fn leading_ident(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Each module's dependencies on the other top-level modules.
fn dependency_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_level_modules(src);
    modules
        .iter()
        .map(|(name, files)| {
            let mut uses = BTreeSet::new();
            for file in files {
                let source = std::fs::read_to_string(file).expect("a source file");
                uses.extend(referenced_modules(&source));
            }
            uses.retain(|used| used != name && modules.contains_key(used));
            (name.clone(), uses)
        })
        .collect()
}

/// A cycle in `graph`, as the modules along it with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Visiting);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = dependency_graph(&src);
    assert!(graph.len() > 5, "found the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "top-level modules import each other: {}\nthe module graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

/// The files of one module folder and the sibling files each names as `super::NAME`
/// (`mod.rs`, which declares them all, is left out).
fn sibling_graph(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: BTreeMap<String, PathBuf> = std::fs::read_dir(dir)
        .expect("a module folder")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .map(|path| {
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                path,
            )
        })
        .filter(|(name, _)| name != "mod")
        .collect();
    files
        .iter()
        .map(|(name, path)| {
            let source = std::fs::read_to_string(path).expect("a source file");
            let mut uses = referenced_after(&source, "super::");
            uses.retain(|used| used != name && files.contains_key(used));
            (name.clone(), uses)
        })
        .collect()
}

#[test]
fn config_files_have_no_cycle() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let graph = sibling_graph(&config);
    assert!(graph.contains_key("validate"), "found the files: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "config files import each other: {}\nthe file graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("server", vec!["reload", "config"]),
        ("reload", vec!["snapshot"]),
        ("snapshot", vec!["server"]),
        ("config", vec![]),
    ]
    .into_iter()
    .map(|(name, uses)| (name.into(), uses.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "reload".to_string(),
            "snapshot".into(),
            "server".into(),
            "reload".into()
        ])
    );
}

#[test]
fn references_are_read_from_paths_groups_and_not_comments() {
    let source = "use crate::config::Origin;\nuse crate::{wasm, tls::TlsInfo};\nlet x = crate::upstream::f(); // crate::server\n/// [`crate::admin`]\nmacro_rules! m { () => { $crate::reload } }";
    let names: Vec<String> = referenced_modules(source).into_iter().collect();
    assert_eq!(names, ["config", "tls", "upstream", "wasm"]);
}
