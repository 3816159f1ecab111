//! Reading a policy folder: every `*.yaml`, `*.yml` and `*.json` file, parsed with the path
//! of any error inside the document, then merged and validated.
//!
//! [`load_documents`] does the same for documents already in memory; the folder reader is
//! that plus reading the files, so both answer alike for the same texts.
//!
//! A document with nothing in it is refused, at start-up as on reload: a zero-byte file, one
//! of only whitespace, comments and `---`, any top-level section left null (`plugins:`
//! with nothing after it), and a YAML document whose last line is a key or a list item with
//! no value (`    config:`). Those are what an editor writing in place or a copy cut short
//! leaves behind, and loading them would run the gateway without the plugins they held: no
//! authentication, no metering. Removing every plugin is written `plugins: []`.
//!
//! Hidden entries (names starting with `.`) are not policy files: editors keep their swap
//! and backup files there, and a Kubernetes ConfigMap mount keeps its real content in
//! `..data` and timestamped `..` folders behind the visible symlinks, which are read through.

use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrors, Origin};
use super::raw::{self, SourceFile};
use super::{model, validate};

/// A policy document in memory: the file name it goes by (`.json` is read as JSON,
/// anything else as YAML) and its text.
#[derive(Debug, Clone)]
pub struct PolicyDocument {
    pub name: String,
    pub text: String,
}

/// Reads, merges and validates the policies in `dir`.
pub fn load_dir(dir: &Path) -> Result<model::Config, ConfigErrors> {
    let documents = read_dir(dir)?;
    parse_and_validate(dir, documents)
}

/// Parses, merges and validates policy documents held in memory, as [`load_dir`] does for
/// the files of a folder; relative file paths in them resolve against `base_dir`.
pub fn load_documents(
    base_dir: &Path,
    documents: Vec<PolicyDocument>,
) -> Result<model::Config, ConfigErrors> {
    parse_and_validate(base_dir, documents.into_iter().map(Ok))
}

/// Parses every document, then validates them together; a document that could not be
/// read or parsed stops validation, and every such error is reported at once.
fn parse_and_validate(
    base_dir: &Path,
    documents: impl IntoIterator<Item = Result<PolicyDocument, ConfigError>>,
) -> Result<model::Config, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for document in documents {
        match document.and_then(parse_document) {
            Ok(file) => files.push(file),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        validate::validate(base_dir, files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The policy files of `dir` in name order, each read or the error of reading it.
fn read_dir(dir: &Path) -> Result<Vec<Result<PolicyDocument, ConfigError>>, ConfigErrors> {
    let folder = Origin {
        file: dir.display().to_string(),
        path: String::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|error| {
        ConfigError::new(
            &folder,
            "",
            format!("cannot read the policies folder: {error}"),
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| !is_hidden(path) && path.is_file() && policy_format(path).is_some())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(ConfigError::new(
            &folder,
            "",
            "no policy files (*.yaml, *.yml, *.json) in the policies folder",
        )
        .into());
    }
    Ok(paths.iter().map(|path| read_file(path)).collect())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

#[derive(Clone, Copy)]
enum Format {
    Yaml,
    Json,
}

fn policy_format(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<PolicyDocument, ConfigError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let origin = Origin {
        file: name.clone(),
        path: String::new(),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new(&origin, "", format!("cannot read: {error}")))?;
    Ok(PolicyDocument { name, text })
}

fn parse_document(
    PolicyDocument { name, text }: PolicyDocument,
) -> Result<SourceFile, ConfigError> {
    let document = match policy_format(Path::new(&name)) {
        Some(Format::Json) => parse_json(&text),
        _ => parse_yaml(&text),
    }
    .map_err(|(path, message)| ConfigError {
        file: name.clone(),
        path,
        message,
    })?;
    Ok(SourceFile { name, document })
}

type ParseError = (String, String);

fn parse_yaml(text: &str) -> Result<raw::Document, ParseError> {
    if text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Err(empty_document());
    }
    let deserializer = serde_norway::Deserializer::from_str(text);
    let document = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = document_path(error.path());
        (path, error.into_inner().to_string())
    })?;
    // The typed parse read a null section as absent; the same text as plain YAML tells.
    if let Ok(serde_norway::Value::Mapping(sections)) = serde_norway::from_str(text) {
        for (name, value) in &sections {
            if value.is_null() {
                return Err(null_section(name.as_str().unwrap_or_default()));
            }
        }
    }
    // A nested value cut off the same way: nobody ends a document on a key meaning null.
    let last_line = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with('#'));
    if last_line.is_some_and(|line| line.ends_with(':') || line == "-") {
        return Err((
            String::new(),
            "the file ends in a key with no value (a file cut short or still being written \
             is refused); write `~` where null is meant"
                .into(),
        ));
    }
    Ok(document)
}

fn parse_json(text: &str) -> Result<raw::Document, ParseError> {
    if text.trim().is_empty() {
        return Err(empty_document());
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let document = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = document_path(error.path());
        (path, error.into_inner().to_string())
    })?;
    if let Ok(serde_json::Value::Object(sections)) = serde_json::from_str(text) {
        for (name, value) in &sections {
            if value.is_null() {
                return Err(null_section(name));
            }
        }
    }
    Ok(document)
}

fn empty_document() -> ParseError {
    (
        String::new(),
        "the file is empty (a file cut short or still being written is refused); \
         write `plugins: []` to remove every plugin, or delete the file"
            .into(),
    )
}

fn null_section(name: &str) -> ParseError {
    (
        name.to_string(),
        "the section is empty (a file cut short or still being written is refused); \
         write `[]` for an empty list, or leave the section out"
            .into(),
    )
}

/// serde_path_to_error writes `.` for the document root; we write nothing.
fn document_path(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        String::new()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_the_path_and_the_valid_fields() {
        let (path, message) =
            parse_yaml("clusters:\n  - name: a\n    endpoints:\n      - adress: 127.0.0.1:1\n")
                .unwrap_err();
        assert_eq!(path, "clusters[0].endpoints[0].adress");
        assert!(message.contains("unknown field `adress`"), "{message}");
        assert!(message.contains("address"), "{message}");
    }

    #[test]
    fn json_errors_are_located_too() {
        let (path, message) =
            parse_json(r#"{"listeners":[{"name":"x","address":"a","protocol":"gopher"}]}"#)
                .unwrap_err();
        assert_eq!(path, "listeners[0].protocol");
        assert!(message.contains("unknown variant `gopher`"), "{message}");
    }

    #[test]
    fn documents_with_nothing_in_them_are_refused() {
        for text in ["", "\n  \n", "# nothing yet\n", "---\n# cut here\n"] {
            let (path, message) = parse_yaml(text).unwrap_err();
            assert_eq!(path, "", "{text:?}");
            assert!(message.contains("the file is empty"), "{text:?}: {message}");
        }
        for text in ["", " \n"] {
            let (_, message) = parse_json(text).unwrap_err();
            assert!(message.contains("the file is empty"), "{text:?}: {message}");
        }
        // A YAML null document is no policy document either.
        assert!(parse_yaml("~\n").is_err());
    }

    #[test]
    fn a_null_section_is_refused_and_named() {
        // A file truncated after a section's key: `plugins:` is null, not an empty list.
        let (path, message) = parse_yaml("plugins:\n").unwrap_err();
        assert_eq!(path, "plugins");
        assert!(message.contains("the section is empty"), "{message}");
        let (path, _) = parse_yaml(
            "virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes: []\nplugins:\n",
        )
        .unwrap_err();
        assert_eq!(path, "plugins");
        let (path, _) = parse_yaml("server:\nplugins:\n").unwrap_err();
        assert_eq!(path, "server");
        let (path, _) = parse_json(r#"{"plugins": null}"#).unwrap_err();
        assert_eq!(path, "plugins");
    }

    #[test]
    fn a_document_ending_in_a_bare_key_is_refused() {
        let cut = "plugins:\n  - name: keys\n    module: key-auth.wasm\n    config:\n";
        let (_, message) = parse_yaml(cut).unwrap_err();
        assert!(message.contains("ends in a key with no value"), "{message}");
        assert!(
            parse_yaml("plugins:\n  - name: keys\n    module: key-auth.wasm\n    config: ~\n")
                .is_ok()
        );
    }

    #[test]
    fn explicit_empty_sections_are_a_document() {
        let document = parse_yaml("# every plugin removed\nplugins: []\n").unwrap();
        assert!(document.plugins.is_empty());
        assert!(parse_yaml("{}\n").is_ok());
        assert!(parse_json(r#"{"plugins": []}"#).unwrap().plugins.is_empty());
    }

    #[test]
    fn a_document_cut_mid_list_is_refused() {
        let whole = "plugins:\n  - name: keys\n    module: key-auth.wasm\n    config:\n      consumers: [{ name: alice, keys: [alice-key] }]\n";
        let cut = &whole[..whole.find("alice-key").unwrap()];
        assert!(parse_yaml(whole).is_ok());
        assert!(parse_yaml(cut).is_err(), "{cut}");
    }

    #[test]
    fn hidden_entries_are_not_policy_files() {
        assert!(is_hidden(Path::new("/policies/..data")));
        assert!(is_hidden(Path::new("/policies/.plugins.yaml.swp")));
        assert!(!is_hidden(Path::new("/policies/plugins.yaml")));
    }

    #[test]
    fn documents_in_memory_are_parsed_by_name_and_validated_together() {
        let document = |name: &str, text: &str| PolicyDocument {
            name: name.into(),
            text: text.into(),
        };
        let config = load_documents(
            Path::new("/policies"),
            vec![
                document(
                    "listeners.json",
                    r#"{"listeners":[{"name":"web","address":"127.0.0.1:8080"}]}"#,
                ),
                document(
                    "routes.yaml",
                    "virtual_hosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: ping\n        direct_response: { status: 200 }\n",
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.listeners[0].name, "web");
        assert_eq!(config.virtual_hosts[0].routes[0].name, "ping");

        let errors = load_documents(
            Path::new("/policies"),
            vec![document("a.json", "listeners: []"), document("b.yaml", "{")],
        )
        .unwrap_err();
        let files: Vec<&str> = errors.0.iter().map(|error| error.file.as_str()).collect();
        assert_eq!(files, ["a.json", "b.yaml"], "{errors}");
    }
}
