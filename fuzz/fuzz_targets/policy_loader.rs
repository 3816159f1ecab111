//! Arbitrary bytes as a policy document, once as YAML and once as JSON, through the
//! parse-merge-validate path of `tollgate check` and of the gateway's start and reloads.
//!
//! Checks: nothing panics (a policy folder is edited by hand and reloaded while serving);
//! every refusal names the document it came from and has a message; an accepted
//! configuration renders its `/config` view.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tollgate::config::{load_documents, PolicyDocument};

/// A folder that does not exist: file references (certificates, plugin modules) resolve
/// against it and are reported missing, never read.
const BASE_DIR: &str = "/nonexistent/tollgate-fuzz/policies";

fuzz_target!(|data: &[u8]| {
    // The folder reader refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.yaml", "fuzz.json"] {
        let document = PolicyDocument {
            name: name.to_string(),
            text: text.to_string(),
        };
        match load_documents(Path::new(BASE_DIR), vec![document]) {
            Ok(config) => {
                // The admin endpoint serves this on every `/config` request.
                assert!(
                    !config.effective.to_string().is_empty(),
                    "an accepted configuration has a /config view"
                );
            }
            Err(errors) => {
                assert!(!errors.0.is_empty(), "a refusal carries at least one error");
                for error in &errors.0 {
                    assert!(
                        error.file == name || error.file == BASE_DIR,
                        "error located in {:?}, not in the document {name}: {error}",
                        error.file
                    );
                    assert!(!error.message.is_empty(), "an error without a message");
                }
                // What `tollgate check` prints.
                let _ = errors.to_string();
            }
        }
    }
});
