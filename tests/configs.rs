//! Every spec under configs/ parses and validates as shipped.

use outerloop_coordinator::spec::ExperimentSpec;

#[test]
fn every_shipped_spec_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Err(e) = ExperimentSpec::parse(&text, &name, &[]) {
            panic!("{e}");
        }
        checked.push(name);
    }
    checked.sort();
    for contract in [
        "omniglot_5w1s_maml.toml",
        "omniglot_5w1s_protonet.toml",
        "omniglot_20w1s_maml.toml",
        "miniimagenet_5w1s_maml.toml",
        "sinusoid_maml.toml",
        "mtl_gradnorm.toml",
    ] {
        assert!(
            checked.iter().any(|c| c == contract),
            "{contract} is missing"
        );
    }
    assert!(checked.len() >= 18, "{checked:?}");
}
