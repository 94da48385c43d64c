//! TLS for every PostgreSQL connection (the pool, and the liveness session,
//! which also carries LISTEN), configured in libpq's words in the store URL:
//!
//! | parameter | meaning |
//! |---|---|
//! | `sslmode=disable` | plain TCP |
//! | `sslmode=prefer` (default) | TLS if the server offers it, else plain; no certificate check |
//! | `sslmode=require` | TLS or fail; no certificate check (but see below) |
//! | `sslmode=verify-ca` | TLS, and the server's certificate must chain to the root certificate |
//! | `sslmode=verify-full` | as verify-ca, and the certificate must name the host of the URL |
//! | `sslrootcert=FILE` | PEM root certificate(s); `system` for the platform's roots (implies verify-full) |
//! | `sslcert=FILE`, `sslkey=FILE` | a client certificate and its key (PEM), for `cert` authentication |
//!
//! As in libpq, the root certificates default to `~/.postgresql/root.crt`,
//! and when a root certificate is at hand `prefer` and `require` check the
//! chain too (like verify-ca). The default `prefer` is libpq's (and psql's,
//! and tokio-postgres's): URLs written for a server without TLS keep
//! working, and connections are encrypted whenever the server can; only
//! verify-full also stops an active man in the middle.
//!
//! The TLS stack is rustls (through `tokio-postgres-rustls`, which also
//! gives SCRAM channel binding) with the `ring` provider rather than
//! OpenSSL through `postgres-native-tls`: both are maintained, but rustls
//! is memory-safe Rust linked into the binary, so `ckpt` needs no system
//! OpenSSL at build or run time, and its verifier can be wrapped to give
//! verify-ca (chain without the name check), which tokio-postgres's own
//! `SslMode` (disable/prefer/require only) does not have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What every connection of a store is made with: rustls's connector,
/// with a `Debug` that shows nothing of its keys.
#[derive(Clone)]
pub(super) struct MakeTls(MakeRustlsConnect);

impl std::fmt::Debug for MakeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeTls")
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.0.make_tls_connect(domain)
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's name.
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Nothing: encryption only.
    Nothing,
    /// The chain to a root, not the name.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    None,
    File(PathBuf),
    System,
}

/// The TLS parameters of a store URL, as given.
#[derive(Debug, Default)]
pub(super) struct TlsParams {
    mode: Option<SslMode>,
    rootcert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// What the parameters mean, decided without touching any file.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    driver: DriverMode,
    verify: Verify,
    roots: Roots,
    client: Option<(PathBuf, PathBuf)>,
}

impl TlsParams {
    /// Takes `key=value` if `key` is a TLS parameter (returns true), or
    /// leaves it for the driver (returns false).
    pub(super) fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "sslmode" => {
                self.mode = Some(match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(format!(
                            "sslmode must be disable, prefer, require, verify-ca or verify-full, not {value:?}"
                        ))
                    }
                })
            }
            "sslrootcert" => self.rootcert = Some(value.to_string()),
            "sslcert" => self.cert = Some(value.to_string()),
            "sslkey" => self.key = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The driver's mode and the connector for these parameters; reads the
    /// certificate and key files now, so a bad path fails the open.
    pub(super) fn connector(&self) -> Result<(DriverMode, MakeTls), String> {
        let home_root = std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".postgresql/root.crt"))
            .filter(|path| path.is_file());
        let plan = self.plan(home_root)?;
        Ok((plan.driver, build(&plan)?))
    }

    /// libpq's rules, with `home_root` the default root file if it exists.
    fn plan(&self, home_root: Option<PathBuf>) -> Result<Plan, String> {
        let system = self.rootcert.as_deref() == Some("system");
        let mode = self.mode.unwrap_or(if system {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        });
        if system && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full, not {} (a public root proves nothing without the host name check)",
                mode.name()
            ));
        }
        let roots = match (&self.rootcert, home_root) {
            _ if system => Roots::System,
            (Some(file), _) => Roots::File(file.into()),
            (None, Some(file)) => Roots::File(file),
            (None, None) => Roots::None,
        };
        let verify = match mode {
            SslMode::Disable => Verify::Nothing,
            SslMode::Prefer | SslMode::Require if roots == Roots::None => Verify::Nothing,
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Verify::Chain,
            SslMode::VerifyFull => Verify::Full,
        };
        if verify != Verify::Nothing && roots == Roots::None {
            return Err(
                "sslmode=verify-ca and verify-full need the server's root certificate: \
                 give sslrootcert=FILE (or sslrootcert=system for the platform's roots); \
                 ~/.postgresql/root.crt does not exist"
                    .to_string(),
            );
        }
        let client = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => return Err("sslcert and sslkey go together: give both or neither".to_string()),
        };
        let driver = match mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            _ => DriverMode::Require,
        };
        // With sslmode=disable nothing is read: no file can fail the open.
        if driver == DriverMode::Disable {
            return Ok(Plan {
                driver,
                verify,
                roots: Roots::None,
                client: None,
            });
        }
        Ok(Plan {
            driver,
            verify,
            roots,
            client,
        })
    }
}

/// The connector for `plan`, reading its files.
fn build(plan: &Plan) -> Result<MakeTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &plan.roots {
        Roots::None => {}
        Roots::File(path) => {
            let certs = read_certs("sslrootcert", path)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("sslrootcert=system: the platform has no root certificates".into());
            }
        }
    }
    let webpki = match plan.verify {
        Verify::Nothing => None,
        _ => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?,
        ),
    };
    let verifier = Arc::new(Verifier {
        verify: plan.verify,
        webpki,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &plan.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = read_certs("sslcert", cert)?;
            let bytes = read("sslkey", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("sslkey {}: no PEM private key ({e})", key.display()))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
    };
    Ok(MakeTls(MakeRustlsConnect::new(config)))
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The PEM certificates in `path` (at least one).
fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: bad PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The server certificate check for each [`Verify`] level: webpki's, with
/// the name mismatch forgiven for verify-ca, or none at all. Handshake
/// signatures are always checked.
#[derive(Debug)]
struct Verifier {
    verify: Verify,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name, so a name error means
        // the chain is good.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Chain => Ok(ServerCertVerified::assertion()),
            Err(rustls::Error::InvalidCertificate(e)) => Err(explained(e, self.verify)),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate error with what was checked, for a one-line message that
/// says which setting refused the server.
fn explained(e: CertificateError, verify: Verify) -> rustls::Error {
    let why = match &e {
        CertificateError::UnknownIssuer => {
            "it does not chain to a root of sslrootcert (unknown issuer)".to_string()
        }
        _ => e.to_string(),
    };
    let checked = match verify {
        Verify::Full => "sslmode=verify-full checks the chain and the host name",
        _ => "the chain is checked against sslrootcert",
    };
    rustls::Error::Other(rustls::OtherError(Arc::new(Refused(format!(
        "server certificate refused ({checked}): {why}"
    )))))
}

/// Why a server certificate was refused.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> TlsParams {
        let mut p = TlsParams::default();
        for (k, v) in pairs {
            assert!(p.take(k, v).unwrap(), "{k}");
        }
        p
    }

    fn plan(pairs: &[(&str, &str)], home: Option<&str>) -> Result<Plan, String> {
        params(pairs).plan(home.map(PathBuf::from))
    }

    #[test]
    fn default_is_prefer_without_checks() {
        let p = plan(&[], None).unwrap();
        assert_eq!((p.driver, p.verify), (DriverMode::Prefer, Verify::Nothing));
    }

    #[test]
    fn modes_map_to_driver_modes_and_checks() {
        for (mode, driver, verify) in [
            ("disable", DriverMode::Disable, Verify::Nothing),
            ("prefer", DriverMode::Prefer, Verify::Chain),
            ("require", DriverMode::Require, Verify::Chain),
            ("verify-ca", DriverMode::Require, Verify::Chain),
            ("verify-full", DriverMode::Require, Verify::Full),
        ] {
            let p = plan(&[("sslmode", mode), ("sslrootcert", "/ca.pem")], None).unwrap();
            assert_eq!((p.driver, p.verify), (driver, verify), "{mode}");
        }
        // Without a root certificate, require checks nothing.
        let p = plan(&[("sslmode", "require")], None).unwrap();
        assert_eq!(p.verify, Verify::Nothing);
    }

    #[test]
    fn root_defaults_to_home_file_like_libpq() {
        let p = plan(&[("sslmode", "require")], Some("/h/.postgresql/root.crt")).unwrap();
        assert_eq!(p.roots, Roots::File("/h/.postgresql/root.crt".into()));
        assert_eq!(p.verify, Verify::Chain);
        let p = plan(&[("sslmode", "disable")], Some("/h/.postgresql/root.crt")).unwrap();
        assert_eq!(p.roots, Roots::None);
    }

    #[test]
    fn system_roots_imply_verify_full_and_refuse_weaker_modes() {
        let p = plan(&[("sslrootcert", "system")], None).unwrap();
        assert_eq!((p.verify, p.roots), (Verify::Full, Roots::System));
        let err = plan(&[("sslrootcert", "system"), ("sslmode", "require")], None).unwrap_err();
        assert!(err.contains("verify-full, not require"), "{err}");
    }

    #[test]
    fn bad_parameters_are_clear_errors() {
        let err = TlsParams::default()
            .take("sslmode", "allow-ish")
            .unwrap_err();
        assert!(
            err.contains("verify-full") && err.contains("allow-ish"),
            "{err}"
        );
        let err = plan(&[("sslmode", "verify-ca")], None).unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
        let err = plan(&[("sslcert", "/c.pem")], None).unwrap_err();
        assert!(err.contains("sslkey"), "{err}");
        assert!(!TlsParams::default().take("schema", "x").unwrap());
    }

    #[test]
    fn unreadable_files_fail_with_their_path() {
        let err = params(&[("sslmode", "verify-ca"), ("sslrootcert", "/no/such/ca.pem")])
            .connector()
            .unwrap_err();
        assert!(err.contains("sslrootcert /no/such/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = params(&[
            ("sslmode", "verify-ca"),
            ("sslrootcert", empty.to_str().unwrap()),
        ])
        .connector()
        .unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
