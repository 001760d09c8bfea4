//! A Kafka-protocol broker of a test's own behind a real TLS listener: tansu (no
//! TLS listener of its own) with stunnel4, from Debian's package, terminating TLS
//! in front of it and requiring a client certificate from the test's CA. tansu
//! advertises the TLS port, so every connection a client makes after the first
//! (metadata, then the partition leader) goes through TLS too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shop_platform::dev_pki::Issued;

use crate::{free_port, spawn_tansu};

#[derive(Debug)]
pub struct TlsBroker {
    tansu: Child,
    stunnel: Child,
    dir: PathBuf,
    /// `localhost:<TLS port>`: the name the server certificate carries.
    pub bootstrap: String,
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl TlsBroker {
    /// `server` must name `localhost`; clients must present a certificate that
    /// `ca_pem` issued.
    pub fn start(server: &Issued, ca_pem: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shop-kafka-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (plain, tls) = (free_port(), free_port());
        std::fs::write(dir.join("server.crt"), &server.cert_pem).expect("cert");
        std::fs::write(dir.join("server.key"), &server.key_pem).expect("key");
        std::fs::write(dir.join("ca.pem"), ca_pem).expect("ca");
        let config = format!(
            "foreground = yes\npid =\ndebug = 4\n\
             [kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\n\
             cert = {dir}/server.crt\nkey = {dir}/server.key\nCAfile = {dir}/ca.pem\n\
             requireCert = yes\nverifyChain = yes\nsslVersionMin = TLSv1.2\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("stunnel.conf"), config).expect("config");
        // Clients come back through the TLS port for everything after bootstrap.
        let tansu = spawn_tansu(plain, &format!("tcp://localhost:{tls}"));
        let stunnel = Command::new(stunnel_binary())
            .arg(dir.join("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 must be installed (make test installs it)");
        wait_listening(tls, "stunnel");
        Self {
            tansu,
            stunnel,
            dir,
            bootstrap: format!("localhost:{tls}"),
        }
    }
}

fn stunnel_binary() -> &'static str {
    let found = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    if found("stunnel4") {
        "stunnel4"
    } else {
        "stunnel"
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
