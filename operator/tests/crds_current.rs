//! `crds/` is generated from the Rust types; this fails when it is stale.
//! Regenerate with `make crds`.

use std::path::Path;

use partnerplane::api::crd;

#[test]
fn crds_folder_matches_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut expected: Vec<String> = vec![];
    for definition in crd::all() {
        let file = crd::file_name(&definition);
        expected.push(file.clone());
        let on_disk = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file}: {e}; run `make crds`"));
        assert!(
            on_disk == crd::to_yaml(&definition),
            "crds/{file} is stale; run `make crds`"
        );
    }
    let kustomization = std::fs::read_to_string(dir.join(crd::KUSTOMIZATION))
        .unwrap_or_else(|e| panic!("crds/{}: {e}; run `make crds`", crd::KUSTOMIZATION));
    assert!(
        kustomization == crd::kustomization(&crd::all()),
        "crds/{} is stale; run `make crds`",
        crd::KUSTOMIZATION
    );
    expected.push(crd::KUSTOMIZATION.to_string());
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "crds/ holds files no type generates");
}

/// Every property of every schema has a description, so `kubectl explain`
/// documents the whole API.
#[test]
fn every_field_has_a_description() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, property) in properties {
                let here = format!("{path}.{name}");
                let documented = property
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.trim().is_empty());
                // apiVersion, kind and metadata are described by Kubernetes itself.
                if !documented && path.matches('.').count() > 0 {
                    missing.push(here.clone());
                }
                walk(property, &here, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = vec![];
    for definition in crd::all() {
        let value = serde_json::to_value(&definition).unwrap();
        for version in value["spec"]["versions"].as_array().unwrap() {
            let root = &version["schema"]["openAPIV3Schema"];
            for part in ["spec", "status"] {
                walk(
                    &root["properties"][part],
                    &format!(
                        "{}.{part}",
                        value["spec"]["names"]["kind"].as_str().unwrap()
                    ),
                    &mut missing,
                );
            }
        }
    }
    // metav1.Condition's fields are documented upstream; everything else is ours.
    missing.retain(|p| !p.contains(".conditions[]."));
    assert!(
        missing.is_empty(),
        "fields without a description:\n{}",
        missing.join("\n")
    );
}
