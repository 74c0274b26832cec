//! Writes the generated CRDs to `crds/*.yaml` and to the Helm chart's `crds/` (or only to the
//! directory given as the first argument).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![here.clone(), here.join("../charts/genesis-mesh/crds")],
    };
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in genesis_crds::all() {
            let path = dir.join(file);
            std::fs::write(&path, genesis_crds::to_yaml(&crd))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
