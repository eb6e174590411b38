//! Per-job credentials and TLS.
//!
//! The leader keeps three files in the job directory: `cert.der` (its self-signed
//! certificate, public), `key.der` (its private key, mode 0600) and `secret` (a random
//! token, mode 0600). They are created on the first start and reused on restarts, so
//! workers started before a leader restart still trust it. Workers pin exactly the
//! certificate in `cert.der` (no CA, no name check: the DER must match byte for byte
//! and the handshake signature must verify with it) and present the secret in `Hello`.
//! On a cluster the job directory sits on shared storage only the job's user can read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::NetError;

/// Environment variable that overrides the `secret` file on workers and status clients.
pub const SECRET_ENV: &str = "OVERINTERP_SECRET";
/// TLS server name the leader's certificate carries (not checked: the DER is pinned).
pub const SERVER_NAME: &str = "overinterp-leader";
/// ALPN protocol id: a peer speaking something else fails the TLS handshake.
const ALPN: &[u8] = b"overinterp/1";

/// File names inside the job directory.
pub const CERT_FILE: &str = "cert.der";
/// Private key file (0600).
pub const KEY_FILE: &str = "key.der";
/// Secret token file (0600).
pub const SECRET_FILE: &str = "secret";
/// The leader writes its bound address here for workers and `status`.
pub const ADDR_FILE: &str = "leader.addr";
/// The leader creates this file when every shard is durable, so that workers started
/// late (or still retrying) exit cleanly instead of waiting for a leader that is gone.
pub const COMPLETE_FILE: &str = "job.complete";

/// The leader's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// DER certificate, as pinned by workers.
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key.
    key_der: Vec<u8>,
    /// Shared secret workers must present.
    pub secret: String,
}

fn file_err(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::File { path, what, source }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NetError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(file_err(&tmp, "create"))?;
    f.write_all(bytes).map_err(file_err(&tmp, "write"))?;
    f.sync_all().map_err(file_err(&tmp, "fsync"))?;
    std::fs::rename(&tmp, path).map_err(file_err(path, "rename into place"))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err(dir, "fsync directory"))?;
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, NetError> {
    std::fs::read(path).map_err(file_err(path, "read"))
}

impl Credentials {
    /// Loads the job directory's credentials, creating them (and the directory) on the
    /// first start.
    pub fn load_or_create(job_dir: &Path) -> Result<Self, NetError> {
        std::fs::create_dir_all(job_dir).map_err(file_err(job_dir, "create job directory"))?;
        let (cert, key, secret) = (
            job_dir.join(CERT_FILE),
            job_dir.join(KEY_FILE),
            job_dir.join(SECRET_FILE),
        );
        if cert.exists() && key.exists() && secret.exists() {
            return Ok(Self {
                cert_der: read_file(&cert)?,
                key_der: read_file(&key)?,
                secret: read_secret_file(&secret)?,
            });
        }
        let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| NetError::Tls(format!("cannot generate the job certificate: {e}")))?;
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let creds = Self {
            cert_der: generated.cert.der().to_vec(),
            key_der: generated.key_pair.serialize_der(),
            secret: token.iter().map(|b| format!("{b:02x}")).collect(),
        };
        write_atomic(&key, &creds.key_der, 0o600)?;
        write_atomic(&secret, format!("{}\n", creds.secret).as_bytes(), 0o600)?;
        write_atomic(&cert, &creds.cert_der, 0o644)?;
        tracing::info!(job_dir = %job_dir.display(), "generated the job certificate and secret");
        Ok(creds)
    }

    /// rustls + QUIC server configuration presenting this certificate.
    pub fn server_config(
        &self,
        transport: quinn::TransportConfig,
    ) -> Result<quinn::ServerConfig, NetError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NetError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.cert_der.clone())], key)
            .map_err(|e| NetError::Tls(format!("job key does not match the certificate: {e}")))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| NetError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// Reads a secret file; warns if others can read it.
fn read_secret_file(path: &Path) -> Result<String, NetError> {
    let meta = std::fs::metadata(path).map_err(file_err(path, "stat"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "secret file is readable by others; chmod 600 it");
    }
    let text = String::from_utf8(read_file(path)?).map_err(|_| NetError::BadFile {
        path: path.to_path_buf(),
        problem: "secret is not UTF-8".into(),
    })?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(NetError::BadFile {
            path: path.to_path_buf(),
            problem: "secret file is empty".into(),
        });
    }
    Ok(secret)
}

/// What a worker or status client needs: the pinned certificate and the secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The leader certificate to pin.
    pub cert_der: Vec<u8>,
    /// The secret to present.
    pub secret: String,
}

impl ClientCredentials {
    /// Reads `cert.der` from the job directory and the secret from `OVERINTERP_SECRET`
    /// if set, else from the `secret` file.
    pub fn load(job_dir: &Path) -> Result<Self, NetError> {
        let cert_der = read_file(&job_dir.join(CERT_FILE))?;
        let secret = match std::env::var(SECRET_ENV) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => read_secret_file(&job_dir.join(SECRET_FILE))?,
        };
        Ok(Self { cert_der, secret })
    }

    /// QUIC client configuration that trusts exactly the pinned certificate.
    pub fn client_config(
        &self,
        transport: quinn::TransportConfig,
    ) -> Result<quinn::ClientConfig, NetError> {
        let provider = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NetError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                der: self.cert_der.clone(),
                provider,
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| NetError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// Reads the leader's address from `leader.addr` in the job directory.
pub fn read_leader_addr(job_dir: &Path) -> Result<std::net::SocketAddr, NetError> {
    let path: PathBuf = job_dir.join(ADDR_FILE);
    let text = std::fs::read_to_string(&path).map_err(file_err(
        &path,
        "read the leader address (is the leader running?)",
    ))?;
    text.trim().parse().map_err(|e| NetError::BadFile {
        path,
        problem: format!("not a socket address ({e}): {:?}", text.trim()),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings shared by both ends: one bidirectional stream per connection,
/// windows large enough for ~0.4 MB results on fast links, keep-alives well inside the
/// idle timeout so a live but quiet peer is not dropped while a hung one is.
pub fn transport(idle_timeout: Duration) -> Result<quinn::TransportConfig, NetError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout)
            .map_err(|e| NetError::Tls(format!("idle timeout: {e}")))?,
    ));
    t.keep_alive_interval(Some(idle_timeout / 4));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((AUTH_RECEIVE_WINDOW as u32).into());
    t.send_window(16 << 20);
    // Nothing here uses unreliable datagrams: buffer none.
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

/// Connection receive window of an authenticated peer (a worker streaming results).
pub const AUTH_RECEIVE_WINDOW: u64 = 16 << 20;
/// Connection receive window of a peer that has not yet authenticated: all it may
/// make the leader buffer, whatever its frames announce.
pub const PREAUTH_RECEIVE_WINDOW: u64 = 128 << 10;
/// Bytes of early packets the leader buffers per not-yet-accepted connection.
pub const INCOMING_BUFFER: u64 = 64 << 10;

/// The leader's transport: [`transport`] with the small pre-authentication receive
/// window; the connection raises it to [`AUTH_RECEIVE_WINDOW`] once the peer has
/// presented the job secret.
pub fn leader_transport(idle_timeout: Duration) -> Result<quinn::TransportConfig, NetError> {
    let mut t = transport(idle_timeout)?;
    t.receive_window((PREAUTH_RECEIVE_WINDOW as u32).into());
    Ok(t)
}

/// Trusts exactly one certificate (compared as DER bytes) and checks that the peer
/// proves possession of its key in the handshake.
#[derive(Debug)]
struct PinnedCert {
    der: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!("leader presented a certificate other than the pinned cert.der");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
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

/// Constant-time string comparison for the secret.
pub(crate) fn secrets_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_created_private_and_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = Credentials::load_or_create(dir.path())?;
        for (file, mode) in [(KEY_FILE, 0o600), (SECRET_FILE, 0o600)] {
            let m = std::fs::metadata(dir.path().join(file))?
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, mode, "{file}");
        }
        assert_eq!(a.secret.len(), 64);
        let b = Credentials::load_or_create(dir.path())?;
        assert_eq!(
            (a.cert_der.clone(), a.secret.clone()),
            (b.cert_der, b.secret)
        );
        let c = ClientCredentials::load(dir.path())?;
        assert_eq!(c.cert_der, a.cert_der);
        Ok(())
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "abcd"));
    }
}
