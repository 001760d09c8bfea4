//! A test mesh's PKI: a CA of the test's own and a certificate per workload,
//! written to files as the services read them.

use std::path::PathBuf;
use std::time::Duration;

use shop_platform::dev_pki::{DevCa, valid_for};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

#[derive(Debug)]
pub struct MeshPki {
    ca: DevCa,
    dir: PathBuf,
}

/// The `TLS_*_FILE` paths of one workload.
#[derive(Clone, Debug)]
pub struct WorkloadFiles {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl MeshPki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca = DevCa::new("shopmesh test CA").expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("ca");
        Self { ca, dir }
    }

    /// `name`'s certificate (`spiffe://shopmesh/<name>`, for 127.0.0.1 and
    /// localhost) and key, written once and reused.
    pub fn workload(&self, name: &str) -> WorkloadFiles {
        let (cert, key) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        if !cert.is_file() {
            let issued = self
                .ca
                .workload(
                    name,
                    &["127.0.0.1", "localhost"],
                    valid_for(Duration::from_secs(86_400)),
                )
                .expect("certificate");
            std::fs::write(&cert, issued.cert_pem).expect("cert");
            std::fs::write(&key, issued.key_pem).expect("key");
        }
        let path = |p: PathBuf| p.to_str().expect("utf-8").to_owned();
        WorkloadFiles {
            cert: path(cert),
            key: path(key),
            ca: path(self.dir.join("ca.pem")),
        }
    }

    /// A test client's TLS, as the workload `name`.
    pub fn client(&self, name: &str) -> ClientTlsConfig {
        let files = self.workload(name);
        let read = |p: &str| std::fs::read_to_string(p).expect("pem");
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&files.ca)))
            .identity(TlsIdentity::from_pem(read(&files.cert), read(&files.key)))
            .domain_name("127.0.0.1")
    }
}

impl Default for MeshPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MeshPki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
