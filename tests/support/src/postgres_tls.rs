//! A PostgreSQL server of a test's own with `ssl=on`: a certificate from the
//! test's CA, and a pg_hba that admits TLS connections only.

use std::path::{Path, PathBuf};
use std::process::Command;

use shop_platform::dev_pki::Issued;

#[derive(Debug)]
pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("SHOPMESH_PG_BIN") {
        return bin.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| Some(d.ok()?.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL installed (scripts/install-tools.sh)")
}

fn as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `program args…`, as the postgres user when the test runs as root (initdb
/// refuses root).
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    let mut command = if as_root() {
        let mut runuser = Command::new("runuser");
        runuser.args(["-u", "postgres", "--"]).arg(program);
        runuser
    } else {
        Command::new(program)
    };
    command.args(args);
    command
}

fn run(program: &Path, args: &[&str]) {
    let status = as_postgres(program, args)
        .status()
        .expect("run PostgreSQL tool");
    assert!(status.success(), "{} {args:?} failed", program.display());
}

impl TlsPostgres {
    /// Starts the server with `server` as its certificate (names 127.0.0.1).
    pub fn start(server: &Issued) -> Self {
        let bin = pg_bin();
        let dir =
            std::env::temp_dir().join(format!("shop-pg-tls-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("dir");
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let data_str = data.to_str().expect("utf-8 path");
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_str,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write");
            let mut perms = std::fs::metadata(&path).expect("meta").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
            std::fs::set_permissions(&path, perms).expect("chmod");
            if as_root() {
                Command::new("chown")
                    .arg("postgres:")
                    .arg(&path)
                    .status()
                    .expect("chown");
            }
        };
        write("server.crt", &server.cert_pem);
        write("server.key", &server.key_pem);
        // TLS or nothing.
        write(
            "pg_hba.conf",
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        );
        let port = crate::free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
             -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_min_protocol_version=TLSv1.3",
            dir.display()
        );
        let log = dir.join("postgres.log");
        run(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_str,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "start",
            ],
        );
        Self { dir, bin, port }
    }

    /// The server's URL with `params` (e.g. `sslmode=verify-full&sslrootcert=…`).
    pub fn url(&self, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Some(data) = data.to_str() {
            let stop = ["-D", data, "-m", "immediate", "stop"];
            let _ = as_postgres(&self.bin.join("pg_ctl"), &stop).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
