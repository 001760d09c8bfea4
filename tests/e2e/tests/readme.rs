//! `make dev` (scripts/dev.sh) runs the mesh, the README's grpcurl and curl lines
//! work against it as written (pointed at the test's free ports), and SIGTERM
//! stops every process.

mod dev;

use dev::{DevMesh, port_open, readme_block};

#[tokio::test]
async fn make_dev_serves_the_readme_lines_and_stops_on_sigterm() {
    let _serial = dev::serial().await;
    let dev = DevMesh::start(&[]).await;
    assert!(
        dev.banner.contains("admin@shopmesh.dev"),
        "banner names the demo admin:\n{}",
        dev.banner
    );

    // The README's lines, run as written (with a unique email so reruns on a kept
    // database still register).
    let email = format!("ada-{}@example.com", std::process::id());
    let rest_email = format!("rest-{}@example.com", std::process::id());
    let script = dev
        .localize(&format!(
            "{}\n{}\n{}",
            readme_block("With `make dev` or `docker compose up` running:"),
            readme_block("A whole order, as Ada"),
            readme_block("errors as `google.rpc.Status` JSON"),
        ))
        .replace("ada@example.com", &email)
        .replace("rest@example.com", &rest_email)
        .replace(
            "rest-first-order",
            &format!("rest-first-order-{}", std::process::id()),
        );
    let stdout = dev::run_readme_lines(&script).await;
    assert!(stdout.contains("shop.user.v1.UserService"), "{stdout}");
    assert!(stdout.contains(r#""TEA-001""#), "the bulk import: {stdout}");
    assert!(stdout.contains("\"SERVING\""), "{stdout}");
    assert!(
        stdout.contains(&format!("\"email\": \"{email}\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"ROLE_ADMIN\""),
        "ListUsers as admin:\n{stdout}"
    );

    let ports = dev.ports;
    let status = dev.stop().await;
    assert!(status.success(), "{status:?}");
    for port in ports.all() {
        assert!(
            !port_open(port),
            "port {port} still open: every service must stop"
        );
    }
}
