//! rustls configuration for each `sslmode`, following libpq's rules:
//!
//! | sslmode     | chain checked                         | host name checked |
//! |-------------|---------------------------------------|-------------------|
//! | prefer      | no                                    | no                |
//! | require     | only when `sslrootcert` is given      | no                |
//! | verify-ca   | yes                                   | no                |
//! | verify-full | yes                                   | yes               |
//!
//! Handshake signatures are verified in every mode; "not checked" only means any
//! certificate is accepted as the server's identity.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use rustls::pki_types::{CertificateRevocationListDer, PrivateKeyDer};

use super::conninfo::{Password, RootCert, SslMode, TlsOptions, TlsVersion};

/// Builds the client configuration, or explains why it cannot be built.
pub(crate) fn client_config(mode: SslMode, tls: &TlsOptions) -> Result<ClientConfig, String> {
    let provider = Arc::new(crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;

    let verify_chain = match mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => tls.rootcert.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    let config = if verify_chain {
        let roots = load_roots(mode, tls.rootcert.as_ref())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(load_crls(tls)?)
            .build()
            .map_err(|e| e.to_string())?;
        if mode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) if tls.send_cert => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read sslcert {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "sslcert {} holds no PEM certificate",
                    cert.display()
                ));
            }
            let key = load_key(key, tls.key_password.as_ref())?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not fit together: {e}"))?
        }
        _ => config.with_no_client_auth(),
    };
    config.enable_sni = tls.sni;
    Ok(config)
}

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929):
/// its hash under the hash of its signature algorithm, SHA-1 and MD5 raised to SHA-256;
/// `None` for a signature without a hash (Ed25519), which cannot be bound.
pub(crate) fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_cert::der::{oid::db::rfc5912 as oid, Decode};
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let algorithm = match parsed.signature_algorithm.oid {
        oid::SHA_1_WITH_RSA_ENCRYPTION
        | oid::SHA_256_WITH_RSA_ENCRYPTION
        | oid::ECDSA_WITH_SHA_256
        | oid::ID_SHA_256 => &ring::digest::SHA256,
        oid::SHA_384_WITH_RSA_ENCRYPTION | oid::ECDSA_WITH_SHA_384 => &ring::digest::SHA384,
        oid::SHA_512_WITH_RSA_ENCRYPTION | oid::ECDSA_WITH_SHA_512 => &ring::digest::SHA512,
        _ => return None,
    };
    Some(
        ring::digest::digest(algorithm, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// The client key, checked as libpq checks it: readable by its owner alone (or, owned by
/// root, by its group too); an encrypted PKCS#8 key is opened with `sslpassword`.
fn load_key(
    path: &std::path::Path,
    password: Option<&Password>,
) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read sslkey {shown}: {e}"))?;
    let mode = meta.permissions().mode();
    let allowed = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if mode & allowed != 0 {
        return Err(format!(
            "sslkey {shown} has group or world access ({:o}): chmod 0600 it (or 0640 if root \
             owns it), as libpq demands",
            mode & 0o777
        ));
    }
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read sslkey {shown}: {e}"))?;
    if pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!(
            "sslkey {shown} is encrypted in the legacy OpenSSL format: convert it to encrypted \
             PKCS#8 (openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD -out NEW)"
        ));
    }
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(password) = password else {
            return Err(format!(
                "sslkey {shown} is encrypted: add sslpassword=… to the connection string"
            ));
        };
        let (_, der) = pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map_err(|e| format!("sslkey {shown} is not valid PEM: {e}"))?;
        let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| format!("sslkey {shown} is not an encrypted PKCS#8 key: {e}"))?;
        let plain = encrypted
            .decrypt(password.expose())
            .map_err(|_| format!("sslkey {shown} cannot be decrypted: check sslpassword"))?;
        return Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()));
    }
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("sslkey {shown} holds no usable PEM private key: {e}"))
}

/// The client key as PEM for a client that reads only unencrypted PEM (sqlx): checked
/// and, if need be, decrypted as for tributary's own sessions.
pub(crate) fn key_pem(
    path: &std::path::Path,
    password: Option<&Password>,
) -> Result<String, String> {
    let (label, der) = match load_key(path, password)? {
        PrivateKeyDer::Pkcs8(der) => ("PRIVATE KEY", der.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Pkcs1(der) => ("RSA PRIVATE KEY", der.secret_pkcs1_der().to_vec()),
        PrivateKeyDer::Sec1(der) => ("EC PRIVATE KEY", der.secret_sec1_der().to_vec()),
        _ => return Err(format!("sslkey {}: unknown key format", path.display())),
    };
    pkcs8::der::pem::encode_string(label, pkcs8::der::pem::LineEnding::LF, &der)
        .map_err(|e| format!("sslkey {}: {e}", path.display()))
}

/// The revocation lists of `sslcrl` (a PEM file) and `sslcrldir` (every file in it).
fn load_crls(tls: &TlsOptions) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let mut files = Vec::new();
    files.extend(tls.crl.clone());
    if let Some(dir) = &tls.crldir {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read sslcrldir {}: {e}", dir.display()))?;
        files.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
    }
    let mut crls = Vec::new();
    for file in files {
        let found = CertificateRevocationListDer::pem_file_iter(&file)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read the CRL {}: {e}", file.display()))?;
        crls.extend(found);
    }
    Ok(crls)
}

fn load_roots(mode: SslMode, root: Option<&RootCert>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match root {
        Some(RootCert::File(path)) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {} holds no usable PEM certificate",
                    path.display()
                ));
            }
        }
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "sslrootcert=system: the system trust store holds no certificate".into(),
                );
            }
        }
        None => {
            return Err(format!(
                "sslmode={} needs a root certificate to check the server against: add \
                 sslrootcert=<path to the CA's PEM file> (or sslrootcert=system) to the URL",
                mode.as_str()
            ))
        }
    }
    Ok(store)
}

/// Checks the chain but accepts any host name (`verify-ca`).
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

/// Accepts any certificate (`prefer`, `require` without a root certificate) but still
/// checks the handshake signatures, so the session keys belong to that certificate.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
