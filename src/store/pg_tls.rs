//! TLS for PostgreSQL connections.
//!
//! TLS is used when `DATABASE_URL` asks for it with `sslmode=require`, `verify-ca` or
//! `verify-full`, and then the server certificate is always verified, against the Mozilla roots
//! plus the CA in `sslrootcert=PATH` (for a private CA, as managed databases use): unlike
//! libpq's `require`, because an unverified connection would hand the database password to
//! whoever sits in between. Without `sslmode` (or with `disable`/`prefer`) the connection is
//! plain, as before: many servers offer TLS with a self-signed certificate (Debian's default),
//! which verification would refuse.

use super::StoreError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What a `DATABASE_URL` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// The URL with the options tokio-postgres does not know taken out.
    pub(crate) url: String,
    /// `sslmode` is `require`, `verify-ca` or `verify-full`.
    pub(crate) tls: bool,
    /// `sslrootcert`: a PEM file of CAs to trust besides the public roots.
    pub(crate) root_cert: Option<String>,
}

pub fn split_options(url: &str) -> Options {
    let Some((base, query)) = url.split_once('?') else {
        return Options {
            url: url.to_owned(),
            tls: false,
            root_cert: None,
        };
    };
    let mut out = Options {
        url: String::new(),
        tls: false,
        root_cert: None,
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => {
                out.root_cert = Some(crate::util::percent_decode(path));
            }
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => {
                out.tls = true;
                kept.push("sslmode=require");
            }
            _ => kept.push(pair),
        }
    }
    out.url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    out
}

/// A connector trusting the Mozilla roots and, if given, the certificates in `root_cert`.
pub fn connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let bad = |why: String| {
            StoreError::Invalid(format!(
                "sslrootcert {path}: {why}; give a PEM file with the database server's CA"
            ))
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Invalid(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::{Options, split_options};

    fn opts(url: &str, tls: bool, root_cert: Option<&str>) -> Options {
        Options {
            url: url.to_owned(),
            tls,
            root_cert: root_cert.map(str::to_owned),
        }
    }

    #[test]
    fn libpq_options_are_taken_out() {
        assert_eq!(
            split_options(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=5"
            ),
            opts(
                "postgres://u@h/db?sslmode=require&connect_timeout=5",
                true,
                Some("/ca.pem")
            )
        );
        assert_eq!(
            split_options("postgres://u@h/db?sslrootcert=/ca.pem"),
            opts("postgres://u@h/db", false, Some("/ca.pem"))
        );
        assert_eq!(
            split_options("postgres://u@h/db?sslmode=prefer"),
            opts("postgres://u@h/db?sslmode=prefer", false, None)
        );
        assert_eq!(
            split_options("postgres://u@h/db"),
            opts("postgres://u@h/db", false, None)
        );
    }
}
