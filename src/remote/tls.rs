//! TLS for remote queues, with [rustls] (and its `ring` provider).
//!
//! A server given a [`rustls::ServerConfig`] ([`ServerConfig::tls`](super::ServerConfig::tls))
//! speaks TLS on every connection; a client given a [`rustls::ClientConfig`]
//! ([`ClientOptions::tls`](super::ClientOptions::tls)) speaks TLS to it and checks its
//! certificate. The shared-key handshake then runs inside TLS and is bound to the TLS
//! session (see [`protocol`](super::protocol)), so a relay between a client and a server
//! fails even if it holds a certificate the client trusts.
//!
//! The two helpers below build configurations from PEM files, which is what `procq serve
//! --tls-cert --tls-key` and `procq stat --tls-ca` do; for anything else build the rustls
//! configuration yourself (the crate is re-exported as [`procq::remote::rustls`](super::rustls)).

use std::io;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `ring` provider with TLS 1.3's AES-128-GCM first (rustls lists AES-256-GCM first):
/// the same security margin for a queue's traffic and about a third less cipher work per
/// byte, which the remote bench's TLS row shows as 5% more items a second. The other
/// suites keep their order; a peer that prefers one of them still gets it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// A server configuration from a PEM certificate chain (the server's certificate first)
/// and a PEM private key; TLS 1.2 and 1.3, no client certificates.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> io::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate chain", e))?;
    if chain.is_empty() {
        return Err(invalid(
            "certificate chain",
            "no certificate in the PEM data",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("private key", e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", e))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificate authorities in `ca_pem` (one or
/// more PEM certificates) and nothing else.
pub fn client_config(ca_pem: &[u8]) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| invalid("certificate authority", e))?;
        roots
            .add(cert)
            .map_err(|e| invalid("certificate authority", e))?;
    }
    if roots.is_empty() {
        return Err(invalid(
            "certificate authority",
            "no certificate in the PEM data",
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_no_suite_is_lost() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut defaults: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, defaults);
    }
}
