//! TLS to a Postgres backend. tokio-postgres knows `sslmode` only as
//! `disable`, `prefer` and `require` and has no `sslrootcert`, so the DSN's
//! TLS parameters are taken out here ([`split_dsn`]), turned into a decision
//! ([`plan`]) and given to rustls ([`connector`]).
//!
//! | `sslmode`            | no CA configured                          | CA configured (`caSecret` or `sslrootcert`) |
//! |----------------------|-------------------------------------------|---------------------------------------------|
//! | `disable`            | clear text                                | refused: the two contradict                 |
//! | `prefer` (default)   | TLS if offered, unverified, else clear    | as `verify-full`: never clear text          |
//! | `require`            | TLS, certificate unverified (warning)     | TLS, chain verified (libpq does the same)   |
//! | `verify-ca`          | refused: nothing to verify against        | TLS, chain verified                         |
//! | `verify-full`        | refused: nothing to verify against        | TLS, chain and host name verified           |

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A DSN's `sslmode`, with libpq's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsConfigError> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            // libpq's `allow` tries clear text first: never what an operator
            // sending DDL and password verifiers wants.
            other => Err(TlsConfigError::UnsupportedMode(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    #[error(
        "sslmode={0} is not supported (use disable, prefer, require, verify-ca or verify-full)"
    )]
    UnsupportedMode(String),
    #[error("sslmode=disable contradicts a configured CA (caSecret or sslrootcert)")]
    DisabledWithCa,
    #[error("sslmode={0} needs a CA to verify against: set caSecret or sslrootcert")]
    NoCa(&'static str),
    /// Says what, never where: the text around could be a password.
    #[error("the connection string is malformed: {0}")]
    Malformed(&'static str),
    #[error("the CA bundle holds no PEM certificate")]
    EmptyBundle,
    #[error("the CA bundle is invalid: {0}")]
    InvalidBundle(String),
}

/// The TLS parameters of a DSN and the DSN left for tokio-postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnTls {
    /// The DSN without `sslmode`/`sslrootcert`; [`plan`] says which mode to add.
    pub dsn: String,
    /// `prefer` when the DSN names none, as with libpq.
    pub mode: SslMode,
    /// Path of the `sslrootcert` file, if named.
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://…?sslmode=…`)
/// or key/value (`host=… sslmode=…`) connection string.
pub fn split_dsn(dsn: &str) -> Result<DsnTls, TlsConfigError> {
    let mut mode = None;
    let mut root_cert = None;
    let rest = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let (base, query) = dsn.split_once('?').unwrap_or((dsn, ""));
        let mut kept = vec![];
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = Some(SslMode::parse(&percent_decode(value)?)?),
                "sslrootcert" => root_cert = Some(percent_decode(value)?),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = vec![];
        for (key, value, raw) in key_values(dsn)? {
            match key {
                "sslmode" => mode = Some(SslMode::parse(&value)?),
                "sslrootcert" => root_cert = Some(value),
                _ => kept.push(raw),
            }
        }
        kept.join(" ")
    };
    Ok(DsnTls {
        dsn: rest,
        mode: mode.unwrap_or(SslMode::Prefer),
        root_cert,
    })
}

/// `key=value` pairs of a libpq key/value string: (key, unquoted value, raw text).
fn key_values(dsn: &str) -> Result<Vec<(&str, String, &str)>, TlsConfigError> {
    let bytes = dsn.as_bytes();
    let mut pairs = vec![];
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_spaces(&mut i);
        if i == bytes.len() {
            return Ok(pairs);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &dsn[start..i];
        skip_spaces(&mut i);
        if i == bytes.len() || bytes[i] != b'=' || key.is_empty() {
            return Err(TlsConfigError::Malformed("a parameter without `=`"));
        }
        i += 1;
        skip_spaces(&mut i);
        let mut value = String::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(TlsConfigError::Malformed("an unterminated quote")),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    }
                    Some(_) => {
                        let c = dsn[i..].chars().next().expect("inside the string");
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = dsn[i..].chars().next().expect("inside the string");
                value.push(c);
                i += c.len_utf8();
            }
        }
        pairs.push((key, value, &dsn[start..i]));
    }
}

fn percent_decode(value: &str) -> Result<String, TlsConfigError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(TlsConfigError::Malformed("a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| TlsConfigError::Malformed("a percent escape that is not UTF-8"))
}

/// What the server's certificate is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: encryption against passive listeners only.
    Nothing,
    /// It chains to the configured CA.
    Chain,
    /// It chains to the configured CA and names the host connected to.
    ChainAndHost,
}

/// How connections to one backend are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPlan {
    /// The mode tokio-postgres gets.
    pub mode: tokio_postgres::config::SslMode,
    pub verify: Verify,
    /// Said once at start-up when the plan leaves room for an attacker.
    pub warning: Option<&'static str>,
}

/// The decision for `mode`, with or without a configured CA (see the module's table).
pub fn plan(mode: SslMode, has_ca: bool) -> Result<TlsPlan, TlsConfigError> {
    use tokio_postgres::config::SslMode as Pg;
    let (mode, verify, warning) = match (mode, has_ca) {
        (SslMode::Disable, true) => return Err(TlsConfigError::DisabledWithCa),
        (SslMode::Disable, false) => (
            Pg::Disable,
            Verify::Nothing,
            Some("sslmode=disable: credentials and statements travel in clear text"),
        ),
        (SslMode::Prefer, false) => (
            Pg::Prefer,
            Verify::Nothing,
            Some(
                "sslmode=prefer without a CA: the certificate is not verified, and a server \
                 declining TLS gets credentials and statements in clear text; \
                 use sslmode=verify-full with caSecret",
            ),
        ),
        (SslMode::Require, false) => (
            Pg::Require,
            Verify::Nothing,
            Some(
                "sslmode=require without a CA: the certificate is not verified, so anyone \
                 in the path can pose as the server; use sslmode=verify-full with caSecret",
            ),
        ),
        (SslMode::VerifyCa | SslMode::VerifyFull, false) => {
            return Err(TlsConfigError::NoCa(mode.as_str()));
        }
        (SslMode::Require | SslMode::VerifyCa, true) => (Pg::Require, Verify::Chain, None),
        (SslMode::Prefer | SslMode::VerifyFull, true) => (Pg::Require, Verify::ChainAndHost, None),
    };
    Ok(TlsPlan {
        mode,
        verify,
        warning,
    })
}

/// The CA certificates of a PEM bundle.
pub fn roots(pem: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsConfigError::InvalidBundle(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsConfigError::InvalidBundle(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::EmptyBundle);
    }
    Ok(roots)
}

/// A connector that checks what `verify` asks against `roots` (unused with [`Verify::Nothing`]).
pub fn connector(verify: Verify, roots: RootCertStore) -> Result<MakeRustlsConnect, rustls::Error> {
    // ring, as everywhere else in the operator, whatever the process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier(verify, roots, &provider)?)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn verifier(
    verify: Verify,
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::Error> {
    if verify == Verify::Nothing {
        return Ok(Arc::new(Unverified(
            provider.signature_verification_algorithms,
        )));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok(match verify {
        Verify::ChainAndHost => webpki,
        _ => Arc::new(ChainOnly(webpki)),
    })
}

/// `verify-ca`: the chain is checked, the name in the certificate is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name only once the chain holds.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA: any certificate, though the handshake
/// must still be signed by its key.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode as Pg;

    #[test]
    fn url_parameters_are_taken_out_and_others_kept() {
        let split = split_dsn(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(split.dsn, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(split.mode, SslMode::VerifyFull);
        assert_eq!(split.root_cert.as_deref(), Some("/etc/ca.pem"));
        let plain = split_dsn("postgresql://u@db/app").unwrap();
        assert_eq!(plain.dsn, "postgresql://u@db/app");
        assert_eq!(plain.mode, SslMode::Prefer);
        assert_eq!(plain.root_cert, None);
        let only_tls = split_dsn("postgres://u@db/app?sslmode=require").unwrap();
        assert_eq!(only_tls.dsn, "postgres://u@db/app");
    }

    #[test]
    fn key_value_parameters_are_taken_out_with_quoting() {
        let split = split_dsn(
            r"host=db password='it\'s x' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=app",
        )
        .unwrap();
        assert_eq!(split.dsn, r"host=db password='it\'s x' dbname=app");
        assert_eq!(split.mode, SslMode::VerifyCa);
        assert_eq!(split.root_cert.as_deref(), Some("/a b/ca.pem"));
        let parsed: tokio_postgres::Config = split.dsn.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"it's x"[..]));
    }

    #[test]
    fn unknown_modes_and_broken_strings_are_refused() {
        assert_eq!(
            split_dsn("postgres://db/app?sslmode=allow"),
            Err(TlsConfigError::UnsupportedMode("allow".into()))
        );
        assert!(matches!(
            split_dsn("host=db sslmode"),
            Err(TlsConfigError::Malformed(_))
        ));
        assert!(matches!(
            split_dsn("host='db"),
            Err(TlsConfigError::Malformed(_))
        ));
        assert!(matches!(
            split_dsn("postgres://db/app?sslrootcert=%zz"),
            Err(TlsConfigError::Malformed(_))
        ));
    }

    #[test]
    fn plans_follow_the_table() {
        let p = |mode, ca| plan(mode, ca).map(|p| (p.mode, p.verify, p.warning.is_some()));
        assert_eq!(
            p(SslMode::Disable, false),
            Ok((Pg::Disable, Verify::Nothing, true))
        );
        assert_eq!(
            p(SslMode::Disable, true),
            Err(TlsConfigError::DisabledWithCa)
        );
        assert_eq!(
            p(SslMode::Prefer, false),
            Ok((Pg::Prefer, Verify::Nothing, true))
        );
        // A CA means TLS is wanted: prefer never falls back to clear text then.
        assert_eq!(
            p(SslMode::Prefer, true),
            Ok((Pg::Require, Verify::ChainAndHost, false))
        );
        assert_eq!(
            p(SslMode::Require, false),
            Ok((Pg::Require, Verify::Nothing, true))
        );
        assert_eq!(
            p(SslMode::Require, true),
            Ok((Pg::Require, Verify::Chain, false))
        );
        assert_eq!(
            p(SslMode::VerifyCa, false),
            Err(TlsConfigError::NoCa("verify-ca"))
        );
        assert_eq!(
            p(SslMode::VerifyCa, true),
            Ok((Pg::Require, Verify::Chain, false))
        );
        assert_eq!(
            p(SslMode::VerifyFull, false),
            Err(TlsConfigError::NoCa("verify-full"))
        );
        assert_eq!(
            p(SslMode::VerifyFull, true),
            Ok((Pg::Require, Verify::ChainAndHost, false))
        );
    }

    // A throwaway CA, a server certificate it signed for `db.example` and
    // 127.0.0.1, and an unrelated CA (P-256, valid until 2126).
    const CA: &str = include_str!("testdata/ca.crt");
    const SERVER: &str = include_str!("testdata/server.crt");
    const OTHER_CA: &str = include_str!("testdata/other-ca.crt");

    fn check(verify: Verify, ca: &str, host: &str) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = verifier(verify, roots(ca).unwrap(), &provider)?;
        let cert = CertificateDer::from_pem_slice(SERVER.as_bytes()).unwrap();
        let name = ServerName::try_from(host.to_string()).unwrap();
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn verification_checks_what_the_mode_asks() {
        let unknown_issuer = Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(check(Verify::ChainAndHost, CA, "db.example"), Ok(()));
        assert_eq!(check(Verify::ChainAndHost, CA, "127.0.0.1"), Ok(()));
        assert!(matches!(
            check(Verify::ChainAndHost, CA, "other.example"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ));
        assert_eq!(
            check(Verify::ChainAndHost, OTHER_CA, "db.example"),
            unknown_issuer
        );
        assert_eq!(check(Verify::Chain, CA, "other.example"), Ok(()));
        assert_eq!(check(Verify::Chain, OTHER_CA, "db.example"), unknown_issuer);
        assert_eq!(check(Verify::Nothing, OTHER_CA, "other.example"), Ok(()));
        assert!(connector(Verify::ChainAndHost, roots(CA).unwrap()).is_ok());
    }

    #[test]
    fn bundles_without_certificates_are_refused() {
        assert_eq!(roots("").err(), Some(TlsConfigError::EmptyBundle));
        assert!(matches!(
            roots("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
            Err(TlsConfigError::InvalidBundle(_))
        ));
    }
}
