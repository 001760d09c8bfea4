//! The services' database connection over TLS against a real PostgreSQL with
//! `ssl=on`: `sslmode=verify-full` with the CA works and is encrypted; another
//! CA, or a plaintext connection, is refused.

use shop_platform::config::{Secret, ServiceSettings};
use shop_platform::dev_pki::DevCa;
use shop_testkit::postgres_tls::TlsPostgres;

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

fn settings(url: String) -> ServiceSettings {
    let mut settings = ServiceSettings::with_ports("tls-test", 0, 0);
    settings.database_url = Secret::new(url);
    settings
}

#[tokio::test]
async fn verify_full_connects_encrypted_and_anything_else_is_refused() {
    let ca = DevCa::new("shopmesh test CA").expect("CA");
    let server = TlsPostgres::start(&ca.server(&["127.0.0.1", "localhost"]).expect("cert"));
    let dir = std::env::temp_dir().join(format!("shop-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    let ca_path = ca_file.to_str().expect("utf-8");

    // The services' own connect path, verifying the server's name and issuer.
    let url = server.url(&format!("sslmode=verify-full&sslrootcert={ca_path}"));
    let pool = shop_platform::db::connect_and_migrate(&settings(url), &NO_MIGRATIONS)
        .await
        .expect("verify-full connects");
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the connection is encrypted");
    assert_eq!(version, "TLSv1.3");

    // A server certificate from another CA is not trusted.
    let other = DevCa::new("another CA").expect("CA");
    let other_file = dir.join("other.pem");
    std::fs::write(&other_file, other.cert_pem()).expect("write");
    let url = server.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_file.display()
    ));
    let err = shop_platform::db::connect_and_migrate(&settings(url), &NO_MIGRATIONS)
        .await
        .expect_err("wrong CA refused");
    let chain = format!("{err:#}");
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");

    // Plaintext is refused by the server (pg_hba: TLS only).
    let url = server.url("sslmode=disable");
    let err = shop_platform::db::connect_and_migrate(&settings(url), &NO_MIGRATIONS)
        .await
        .expect_err("plaintext refused");
    let chain = format!("{err:#}");
    assert!(
        chain.contains("no encryption") || chain.contains("pg_hba"),
        "{chain}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
