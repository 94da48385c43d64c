//! TLS to Redis: `rediss://` URLs, with the server's certificate checked
//! (chain and host name) against the platform's roots, or against the PEM
//! root(s) of `?tls_ca=FILE`; `tls_cert=FILE&tls_key=FILE` add a client
//! certificate (for `tls-auth-clients yes`). There is no unchecked mode.
//!
//! The TLS stack is the redis crate's rustls support (the same rustls, with
//! the `ring` provider, as the PostgreSQL store's).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The TLS files of a `redis://` or `rediss://` URL's query string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TlsFiles {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsFiles {
    /// Takes `key=value` if `key` is a TLS parameter (returns true).
    pub(super) fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "tls_ca" => &mut self.ca,
            "tls_cert" => &mut self.cert,
            "tls_key" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }

    /// The client for `base` (the URL without its query string): with
    /// these files read, or as the driver makes it when there are none.
    pub(super) fn client(&self, base: &str) -> Result<::redis::Client, String> {
        if *self == TlsFiles::default() {
            return ::redis::Client::open(base).map_err(|e| e.to_string());
        }
        if !base.starts_with("rediss://") {
            return Err("tls_ca, tls_cert and tls_key need a rediss:// URL".to_string());
        }
        let read = |what: &str, path: &str| {
            std::fs::read(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
        };
        // The driver takes a file without a certificate in it as an empty
        // set, and every server then fails as "UnknownIssuer": say so here.
        let read_certs = |what: &str, path: &str| {
            let bytes = read(what, path)?;
            match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
                Ok(certs) if !certs.is_empty() => Ok(bytes),
                Ok(_) => Err(format!("{what} {path}: no PEM certificate in it")),
                Err(e) => Err(format!("{what} {path}: bad PEM ({e})")),
            }
        };
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
                client_cert: read_certs("tls_cert", cert)?,
                client_key: read("tls_key", key)?,
            }),
            (None, None) => None,
            _ => return Err("tls_cert and tls_key go together: give both or neither".to_string()),
        };
        let root_cert = match &self.ca {
            Some(path) => Some(read_certs("tls_ca", path)?),
            None => None,
        };
        // The driver builds its rustls configuration with the process's
        // default provider: make it ring, as for PostgreSQL (an error only
        // means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        ::redis::Client::build_with_tls(
            base,
            ::redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_rediss_both_halves_and_readable_files() {
        let mut files = TlsFiles::default();
        assert!(files.take("tls_ca", "/no/such/ca.pem"));
        assert!(!files.take("prefix", "x"));
        let err = files.client("redis://127.0.0.1:6379/0").unwrap_err();
        assert!(err.contains("rediss://"), "{err}");
        let err = files.client("rediss://127.0.0.1:6379/0").unwrap_err();
        assert!(err.contains("cannot read tls_ca /no/such/ca.pem"), "{err}");
        let mut half = TlsFiles::default();
        half.take("tls_cert", "/c.pem");
        let err = half.client("rediss://127.0.0.1:6379/0").unwrap_err();
        assert!(err.contains("tls_key"), "{err}");
        // A CA file without a certificate: said, not an empty trust list.
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let mut files = TlsFiles::default();
        files.take("tls_ca", empty.to_str().unwrap());
        let err = files.client("rediss://127.0.0.1:6379/0").unwrap_err();
        assert!(err.contains("no PEM certificate in it"), "{err}");
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut files = TlsFiles::default();
        files.take("tls_ca", garbled.to_str().unwrap());
        let err = files.client("rediss://127.0.0.1:6379/0").unwrap_err();
        assert!(err.contains("bad PEM"), "{err}");
    }
}
