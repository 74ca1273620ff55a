//! Embeds every Fluent file under `locales/LANG/*.ftl`: adding a language is adding a folder,
//! no code.

use std::fmt::Write as _;
use std::path::Path;

fn main() -> std::io::Result<()> {
    // Read at run time, not with env!(): a build script compiled in another checkout (a
    // copied target/) would otherwise embed that checkout's files.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?;
    let root = Path::new(&manifest).join("locales");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut langs: Vec<_> = std::fs::read_dir(&root)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    langs.sort_by_key(|e| e.file_name());
    let mut out = String::from("/// Embedded Fluent sources: (language tag, [file contents]).\n");
    out.push_str("pub(crate) const LOCALES: &[(&str, &[&str])] = &[\n");
    for lang in langs {
        let dir = lang.path();
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ftl"))
            .collect();
        files.sort();
        let tag = lang.file_name().to_string_lossy().into_owned();
        let _ = write!(out, "    ({tag:?}, &[");
        for f in files {
            println!("cargo:rerun-if-changed={}", f.display());
            let _ = write!(out, "include_str!({:?}), ", f.display().to_string());
        }
        out.push_str("]),\n");
    }
    out.push_str("];\n");
    let dest =
        Path::new(&std::env::var("OUT_DIR").map_err(std::io::Error::other)?).join("locales.rs");
    std::fs::write(dest, out)
}
