//! Starting and stopping `make dev` (scripts/dev.sh) for a test, on free ports so
//! that a `make dev` already running is left alone, and plain HTTP with curl.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The ports a mesh listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub gateway: u16,
    pub user: u16,
    pub inventory: u16,
    pub order: u16,
    pub user_admin: u16,
    pub inventory_admin: u16,
    pub order_admin: u16,
}

impl Ports {
    fn free() -> Self {
        let mut taken = std::collections::BTreeSet::new();
        let mut next = || loop {
            let port = shop_testkit::free_port();
            if taken.insert(port) {
                return port;
            }
        };
        Self {
            gateway: next(),
            user: next(),
            inventory: next(),
            order: next(),
            user_admin: next(),
            inventory_admin: next(),
            order_admin: next(),
        }
    }

    /// Free ports for `replicas` copies: copy k uses each service port + 10k and
    /// the gateway port + k (scripts/dev.sh), so those must be free as well.
    fn free_for(replicas: u16) -> Self {
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        loop {
            let ports = Self::free();
            let copies_free = (1..replicas).all(|k| {
                free(ports.gateway + k)
                    && ports.all()[1..]
                        .iter()
                        .all(|port| port.checked_add(10 * k).is_some_and(free))
            });
            if copies_free {
                return ports;
            }
        }
    }

    pub fn all(&self) -> [u16; 7] {
        [
            self.gateway,
            self.user,
            self.inventory,
            self.order,
            self.user_admin,
            self.inventory_admin,
            self.order_admin,
        ]
    }

    /// The README's ports (those of a `make dev` left to its defaults) and these.
    fn readme_pairs(&self) -> [(u16, u16); 7] {
        [
            (8080, self.gateway),
            (50051, self.user),
            (50052, self.inventory),
            (50053, self.order),
            (9101, self.user_admin),
            (9102, self.inventory_admin),
            (9103, self.order_admin),
        ]
    }
}

static GATEWAY: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// The running mesh's gateway, e.g. `http://127.0.0.1:41234`.
pub fn gateway() -> String {
    GATEWAY.lock().expect("gateway address").clone()
}

/// Tests in one process take turns (nextest runs each in its own process and
/// serialises them with the `make-dev` test group in .config/nextest.toml).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn readme_block(after: &str) -> String {
    let readme =
        std::fs::read_to_string(shop_testkit::workspace_root().join("README.md")).expect("README");
    let rest = readme.split(after).nth(1).expect("README section");
    let block = rest.split("```sh").nth(1).expect("code block");
    block.split("```").next().expect("block end").to_owned()
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub struct DevMesh {
    child: Child,
    pub banner: String,
    pub ports: Ports,
    stopped: bool,
}

impl Drop for DevMesh {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if let Some(pid) = self.child.id() {
            let group = format!("-{pid}");
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &group])
                .status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .status();
        }
    }
}

impl DevMesh {
    /// Runs scripts/dev.sh on the test run's PostgreSQL and broker, on free ports,
    /// with extra environment.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let replicas: u16 = env
            .iter()
            .find(|(key, _)| *key == "REPLICAS")
            .map_or(1, |(_, n)| n.parse().expect("REPLICAS is a number"));
        let root = shop_testkit::workspace_root();
        let ports = Ports::free_for(replicas);
        *GATEWAY.lock().expect("gateway address") = format!("http://127.0.0.1:{}", ports.gateway);
        let mut child = Command::new(root.join("scripts/dev.sh"))
            .current_dir(&root)
            .env("DATABASE_URL", shop_testkit::admin_database_url())
            .env("KAFKA_BROKERS", shop_testkit::kafka_brokers())
            // A Redis of its own (started by scripts/with-infra.sh), as `make dev`
            // has: rate-limit buckets never carry over from another test's mesh.
            .env("REDIS_URL", "")
            .env("RUST_LOG", "warn")
            .env("GATEWAY_PORT", ports.gateway.to_string())
            .env("USER_GRPC_PORT", ports.user.to_string())
            .env("INVENTORY_GRPC_PORT", ports.inventory.to_string())
            .env("ORDER_GRPC_PORT", ports.order.to_string())
            .env("USER_ADMIN_PORT", ports.user_admin.to_string())
            .env("INVENTORY_ADMIN_PORT", ports.inventory_admin.to_string())
            .env("ORDER_ADMIN_PORT", ports.order_admin.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a failing test can stop everything it started.
            .process_group(0)
            .spawn()
            .expect("scripts/dev.sh");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
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
        // Keep draining its output so the services never block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        Self {
            child,
            banner,
            ports,
            stopped: false,
        }
    }

    /// README lines pointed at this mesh's ports instead of the defaults.
    pub fn localize(&self, script: &str) -> String {
        self.ports
            .readme_pairs()
            .iter()
            .fold(script.to_owned(), |text, (readme, actual)| {
                text.replace(
                    &format!("127.0.0.1:{readme}"),
                    &format!("127.0.0.1:{actual}"),
                )
            })
    }

    /// SIGTERM, as a supervisor would send it; returns how it exited.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid").to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .expect("kill")
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("make dev stops within 30 s")
            .expect("wait");
        self.stopped = true;
        status
    }
}

/// One HTTP exchange with curl.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

pub async fn curl(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[&str],
) -> Reply {
    curl_at(&gateway(), method, path, token, body, headers).await
}

/// `curl` against the gateway at `base` (`http://127.0.0.1:port`).
pub async fn curl_at(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[&str],
) -> Reply {
    let dir = std::env::temp_dir().join(format!("shopmesh-curl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", method, "-D"])
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file);
    cmd.args(["-w", "%{http_code}", "--max-time", "20"]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = body {
        let file = dir.join("request");
        std::fs::write(&file, body).expect("request body");
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", file.display()));
    }
    cmd.arg(format!("{base}{path}"));
    let out = cmd.output().await.expect("curl must be installed");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let reply = Reply {
        status,
        headers: std::fs::read_to_string(&head_file).unwrap_or_default(),
        body: std::fs::read_to_string(&body_file).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    reply
}

/// The demo admin's access token (the admin `make dev` seeds), signed in over REST.
pub async fn admin_token() -> String {
    let login = curl(
        "POST",
        "/v1/auth:login",
        None,
        Some(r#"{"email":"admin@shopmesh.dev","password":"dev-admin-password"}"#),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "the demo admin signs in: {}", login.body);
    login.json()["accessToken"]
        .as_str()
        .expect("admin token")
        .to_owned()
}

/// Runs README lines with bash from the checkout's root, as a person would
/// (`.dev/keys/tls` is there); their standard output, or a failure showing both
/// outputs.
pub async fn run_readme_lines(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(shop_testkit::workspace_root())
        .env_remove("PKI")
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README lines failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
