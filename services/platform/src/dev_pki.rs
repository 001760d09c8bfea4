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
