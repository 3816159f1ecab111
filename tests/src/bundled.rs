//! The bundled plugins (the crates of the cargo workspace in `plugins/`), built for
//! `wasm32-wasip1` by `tests/build.rs`: one constant per plugin with the absolute path of its
//! `.wasm`, named after the crate (`RATE_LIMIT`, `KEY_AUTH`, ...), and `ALL`.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn every_bundled_plugin_was_built() {
        assert!(super::ALL.len() >= 3);
        for (name, path) in super::ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert_eq!(&bytes[..4], b"\0asm", "{name} is a wasm module");
        }
    }
}
