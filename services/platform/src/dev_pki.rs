//! A development certificate authority (rcgen): the certificates that `make dev`,
//! the compose key job and the tests use where a platform issuer (cert-manager,
//! SPIRE) issues them in production.

use std::ops::Range;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::tls::TRUST_DOMAIN;

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// A CA that signs server and workload certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// From an hour ago (clock skew) to `lifetime` from now.
pub fn valid_for(lifetime: Duration) -> Range<OffsetDateTime> {
    let now = OffsetDateTime::now_utc();
    now - time::Duration::hours(1)..now + lifetime
}

impl DevCa {
    /// A new CA named `name`, valid ten years.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let validity = valid_for(Duration::from_secs(10 * 365 * 24 * 3600));
        (params.not_before, params.not_after) = (validity.start, validity.end);
        let key = KeyPair::generate().context("CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("CA certificate")?;
        Ok(Self { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), valid a year.
    pub fn server(&self, hosts: &[&str]) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .context("server certificate names")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, valid_for(Duration::from_secs(365 * 24 * 3600)))
    }

    /// A workload certificate for client and server use: `spiffe://shopmesh/<name>`
    /// as its URI name, `hosts` as its DNS or IP names, valid over `validity`.
    pub fn workload(
        &self,
        name: &str,
        hosts: &[&str],
        validity: Range<OffsetDateTime>,
    ) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .context("workload certificate names")?;
        let id = format!("spiffe://{TRUST_DOMAIN}/{name}");
        params
            .subject_alt_names
            .push(SanType::URI(id.try_into().context("workload identity")?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Range<OffsetDateTime>,
    ) -> anyhow::Result<Issued> {
        (params.not_before, params.not_after) = (validity.start, validity.end);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().context("certificate key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The workloads `write_mesh_pki` issues certificates to, and the person at the
/// keyboard (`you`, for grpcurl).
pub const WORKLOADS: [&str; 5] = [
    "user-service",
    "inventory-service",
    "order-service",
    "gateway",
    "you",
];

const CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates closer than this to their end are issued again (with a new CA).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Whether `dir` holds a complete set of certificates good for another month.
fn complete(dir: &std::path::Path) -> bool {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let good = |file: std::path::PathBuf| {
        CertificateDer::from_pem_file(&file)
            .ok()
            .and_then(|der| crate::tls::validity(&der).ok())
            .is_some_and(|(_, not_after)| std::time::SystemTime::now() + RENEW_BEFORE < not_after)
    };
    good(dir.join("ca.pem"))
        && WORKLOADS
            .iter()
            .all(|w| good(dir.join(format!("{w}.crt"))) && dir.join(format!("{w}.key")).is_file())
}

/// The development mesh's PKI in `dir`: `ca.pem`, and `<workload>.crt` /
/// `<workload>.key` for each of `WORKLOADS`, each certificate naming
/// `spiffe://shopmesh/<workload>` and the hosts it is reached by (its compose
/// name, localhost, 127.0.0.1). A complete set good for another month is kept;
/// otherwise the whole set is made again.
pub fn write_mesh_pki(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if complete(dir) {
        return Ok(());
    }
    let ca = DevCa::new("shopmesh development CA")?;
    for workload in WORKLOADS {
        let issued = ca.workload(
            workload,
            &[workload, "localhost", "127.0.0.1"],
            valid_for(CERT_LIFETIME),
        )?;
        let key = dir.join(format!("{workload}.key"));
        std::fs::write(&key, &issued.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::write(dir.join(format!("{workload}.crt")), &issued.cert_pem)?;
    }
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    eprintln!(
        "made the development CA and certificates in {}",
        dir.display()
    );
    Ok(())
}

/// `user-service generate-keys DIR`: the signing keys (`auth::write_keypairs`) and
/// the mesh's PKI under `DIR/tls`. Two variables serve docker compose, whose key
/// job runs as root: `KEYS_OWNER=uid:gid` hands every file to the services' user,
/// and `CLIENT_BUNDLE_DIR` receives `ca.pem`, `you.crt` and `you.key`, readable by
/// the person at the keyboard, for grpcurl.
pub fn generate_dev_keys(dir: &std::path::Path) -> anyhow::Result<()> {
    crate::auth::write_keypairs(dir)?;
    let tls = dir.join("tls");
    write_mesh_pki(&tls)?;
    if let Ok(owner) = std::env::var("KEYS_OWNER") {
        let (uid, gid) = owner
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
            .context("KEYS_OWNER must be uid:gid")?;
        for path in [dir.to_path_buf(), tls.clone()] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            for entry in std::fs::read_dir(&path)? {
                std::os::unix::fs::chown(entry?.path(), Some(uid), Some(gid))?;
            }
        }
    }
    if let Ok(bundle) = std::env::var("CLIENT_BUNDLE_DIR") {
        let bundle = std::path::Path::new(&bundle);
        std::fs::create_dir_all(bundle)?;
        for file in ["ca.pem", "you.crt", "you.key"] {
            let target = bundle.join(file);
            std::fs::copy(tls.join(file), &target)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}
