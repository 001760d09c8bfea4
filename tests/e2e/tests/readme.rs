//! `make dev` (scripts/dev.sh) runs the mesh on the README's ports, the README's
//! grpcurl lines work against it as written, and SIGTERM stops every process.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn readme_block(after: &str) -> String {
    let readme =
        std::fs::read_to_string(shop_testkit::workspace_root().join("README.md")).expect("README");
    let rest = readme.split(after).nth(1).expect("README section");
    let block = rest.split("```sh").nth(1).expect("code block");
    block.split("```").next().expect("block end").to_owned()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn make_dev_serves_the_readme_lines_and_stops_on_sigterm() {
    let root = shop_testkit::workspace_root();
    let mut dev = Command::new(root.join("scripts/dev.sh"))
        .current_dir(&root)
        .env("DATABASE_URL", shop_testkit::admin_database_url())
        .env("KAFKA_BROKERS", shop_testkit::kafka_brokers())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("scripts/dev.sh");
    let mut stderr = BufReader::new(dev.stderr.take().expect("stderr")).lines();
    let mut banner = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "make dev never printed its banner:\n{banner}"
    );
    assert!(
        banner.contains("admin@shopmesh.dev"),
        "banner names the demo admin:\n{banner}"
    );
    // Keep draining its output so the services never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    // The README's lines, run as written (with a unique email so reruns on a kept
    // database still register).
    let email = format!("ada-{}@example.com", std::process::id());
    let script = format!(
        "{}\n{}",
        readme_block("With `make dev` running:"),
        readme_block("A whole order, as Ada")
    )
    .replace("ada@example.com", &email);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README lines failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shop.user.v1.UserService"), "{stdout}");
    assert!(stdout.contains("\"SERVING\""), "{stdout}");
    assert!(
        stdout.contains(&format!("\"email\": \"{email}\"")),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"ROLE_ADMIN\""),
        "ListUsers as admin:\n{stdout}"
    );

    let pid = dev.id().expect("pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill")
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .expect("make dev stops within 30 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        !port_open(50051) && !port_open(9101),
        "every service stopped"
    );
}
