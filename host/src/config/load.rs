//! Reading a policy folder: every `*.yaml`, `*.yml` and `*.json` file, parsed with the path
//! of any error inside the document, then merged and validated.
//!
//! [`load_documents`] does the same for documents already in memory; the folder reader is
//! that plus reading the files, so both answer alike for the same texts.

use std::path::{Path, PathBuf};

use super::{model, raw, ConfigError, ConfigErrors, Origin};

/// One parsed policy file.
pub(super) struct SourceFile {
    /// The name shown in errors: relative to the policies folder.
    pub name: String,
    pub document: raw::Document,
}

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
        model::Config::from_files(base_dir, files)
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
        .filter(|path| path.is_file() && policy_format(path).is_some())
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
    // An empty or comment-only file is a valid, empty document.
    if text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Ok(raw::Document::default());
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = document_path(error.path());
        (path, error.into_inner().to_string())
    })
}

fn parse_json(text: &str) -> Result<raw::Document, ParseError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = document_path(error.path());
        (path, error.into_inner().to_string())
    })
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

    #[test]
    fn comment_only_yaml_is_empty() {
        let document = parse_yaml("# nothing yet\n").unwrap();
        assert!(document.listeners.is_empty());
    }
}
