//! Replays every committed seed (`fuzz/seeds/<target>/`) and reproducer
//! (`fuzz/regressions/<target>/`) through its target: each must pass.

use std::path::Path;

#[test]
fn every_seed_and_reproducer_passes() {
    // config_parse reads the files a config names (fixtures/) from the current
    // directory, which cargo sets to this crate's folder.
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut replayed = 0;
    for (name, target) in keygate_fuzz_targets::TARGETS {
        for folder in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(name)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                println!("{}", path.display());
                target(&data);
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "no seed found");
}
