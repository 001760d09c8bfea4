//! Every service the workspace builds appears in each place that runs or watches
//! it (docs/new-service.md): a service forgotten in one of them fails here, not
//! in a chaos or compose run.

use std::path::Path;

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (binary, short name, admin port) of every service crate under services/.
fn services(root: &Path) -> Vec<(String, String, u16)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("services")).expect("services/") {
        let dir = entry.expect("entry").path();
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let Some(binary) = manifest
            .split("[[bin]]")
            .nth(1)
            .and_then(|bin| bin.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|name| name.trim_matches('"').to_owned())
        else {
            continue; // a library (the platform crate)
        };
        let settings = std::fs::read_to_string(dir.join("src/settings.rs")).expect("settings.rs");
        let admin_port = settings
            .lines()
            .find_map(|l| l.strip_prefix("pub const ADMIN_PORT: u16 = "))
            .and_then(|v| v.trim_end_matches(';').parse().ok())
            .unwrap_or_else(|| panic!("{binary}: no ADMIN_PORT in settings.rs"));
        let short = binary.trim_end_matches("-service").to_owned();
        found.push((binary, short, admin_port));
    }
    found.sort();
    found
}

#[test]
fn every_service_is_built_run_deployed_scraped_and_tortured() {
    let root = shop_testkit::workspace_root();
    let services = services(&root);
    assert_eq!(services.len(), 3, "{services:?}");
    let compose = read(&root, "docker-compose.yml");
    let dockerfile = read(&root, "deploy/docker/Dockerfile");
    let kustomization = read(&root, "deploy/k8s/base/kustomization.yaml");
    let policies = read(&root, "deploy/k8s/base/networkpolicy.yaml");
    let prometheus = read(&root, "deploy/prometheus/prometheus.yml");
    let edge = read(&root, "deploy/compose/edge.cfg");
    let dev = read(&root, "scripts/dev.sh");
    let chaos = read(&root, "tests/chaos/mesh.py");
    let chaos_services = chaos
        .lines()
        .find_map(|l| l.strip_prefix("SERVICES = "))
        .expect("SERVICES in tests/chaos/mesh.py");
    for (binary, short, admin_port) in &services {
        let missing: Vec<&str> = [
            (
                "docker-compose.yml",
                compose.contains(&format!("\n  {binary}:\n")),
            ),
            (
                "deploy/docker/Dockerfile (target and build)",
                dockerfile.contains(&format!("AS {binary}\n"))
                    && dockerfile.contains(&format!("target/release/{binary}")),
            ),
            (
                "deploy/k8s/base (manifest listed in kustomization.yaml)",
                root.join(format!("deploy/k8s/base/{binary}.yaml"))
                    .is_file()
                    && kustomization.contains(&format!("- {binary}.yaml")),
            ),
            (
                "deploy/k8s/base/networkpolicy.yaml",
                policies.contains(&format!("app.kubernetes.io/name: {binary}")),
            ),
            (
                "deploy/prometheus/prometheus.yml (found by DNS, with its admin port)",
                prometheus.contains(&format!(
                    "names: [{binary}]\n        type: A\n        port: {admin_port}\n"
                )),
            ),
            (
                "deploy/compose/edge.cfg (its gRPC port published through the edge)",
                edge.contains(&format!("server-template copy 8 {binary}:")),
            ),
            (
                "tests/chaos/mesh.py ComposeMesh admin_ports",
                chaos.contains(&format!("\"{short}\": {admin_port}")),
            ),
            (
                "scripts/dev.sh",
                dev.contains(&format!("\"$BIN/{binary}\"")),
            ),
            (
                "tests/chaos/mesh.py SERVICES",
                chaos_services.contains(&format!("\"{short}\"")),
            ),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(place, _)| place)
        .collect();
        assert!(
            missing.is_empty(),
            "{binary} is missing from {missing:?} (see docs/new-service.md)"
        );
    }
}

/// The files every service has, each in the same role (docs/code-map.md).
const ROLE_FILES: [&str; 8] = [
    "main.rs",
    "lib.rs",
    "application.rs",
    "settings.rs",
    "api.rs",
    "model.rs",
    "store.rs",
    "events.rs",
];

/// Every Rust file of a service's `src/`, relative to it.
fn sources(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(dir).expect("under src");
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_service_has_one_shape() {
    let root = shop_testkit::workspace_root();
    for (binary, short, _) in services(&root) {
        let src = root.join("services").join(&short).join("src");
        let files = sources(&src);
        for role in ROLE_FILES {
            assert!(
                files.iter().any(|f| f == role),
                "{binary}: no src/{role} ({files:?})"
            );
        }
        for file in &files {
            let text = read(&src, file);
            // The store speaks SQL and model types; the service's messages stay in
            // api.rs, model.rs's conversions and events.rs.
            if file == "store.rs" || file.starts_with("store/") {
                assert!(
                    !text.contains("pb::") && !text.contains(&format!("shop_proto::{short}")),
                    "{binary}: src/{file} names a wire message"
                );
            }
            // Only the gRPC edge implements the generated service trait.
            let serves = text
                .lines()
                .any(|l| l.starts_with("impl ") && l.contains("Service for "));
            assert!(
                !serves || file == "api.rs",
                "{binary}: src/{file} implements a gRPC service outside api.rs"
            );
        }
    }
}
