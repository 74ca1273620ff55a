//! `uniffi-bindgen`: generates the Kotlin, Swift and Python bindings of `handover-ffi` in library
//! mode (`uniffi-bindgen generate --library target/debug/libhandover_ffi.so --language kotlin
//! --out-dir ffi/bindings/kotlin`). `scripts/ffi-bindings.sh` runs it for all three languages.

fn main() {
    uniffi::uniffi_bindgen_main();
}
