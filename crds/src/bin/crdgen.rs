//! Writes the generated CRDs to `crds/*.yaml` (or to the directory given as the first argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for (file, crd) in genesis_crds::all() {
        let path = dir.join(file);
        std::fs::write(&path, genesis_crds::to_yaml(&crd))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
