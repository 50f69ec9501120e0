//! Certificates for TLS clusters: a throw-away CA, a server certificate it signs, and
//! client certificates (for `cert` and `clientcert=verify-full` in pg_hba.conf).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM texts for one TLS cluster.
pub(super) struct Certificates {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    /// Per role: a certificate whose common name is the role, and its key.
    pub clients: Vec<(String, String, String)>,
}

/// A fresh CA and a server certificate for `localhost` and `127.0.0.1`, signed by that CA, so
/// clients can verify the server fully (`sslmode=verify-full`) against the CA alone; and a
/// client certificate for each of `clients`, signed by the same CA.
pub(super) fn generate(clients: &[String]) -> Certificates {
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tributary test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("generating the CA key");
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .expect("self-signing the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    // "127.0.0.1" becomes an IP address SAN, "localhost" a DNS name SAN.
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server certificate parameters");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().expect("generating the server key");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("signing the server certificate");

    let clients = clients
        .iter()
        .map(|role| {
            let mut params = CertificateParams::new(Vec::new()).expect("client parameters");
            params.distinguished_name.push(DnType::CommonName, role);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().expect("generating a client key");
            let cert = params
                .signed_by(&key, &issuer)
                .expect("signing a client certificate");
            (role.clone(), cert.pem(), key.serialize_pem())
        })
        .collect();

    Certificates {
        ca_cert: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        clients,
    }
}
