//! TLS for components' outgoing `https://` requests, when they need more
//! than the public roots: the trusted roots (the public webpki roots, plus
//! the certificates of a `ca_file`, such as a cluster's own CA), the name
//! to verify (`server_name`, for a target reached by an address or another
//! name), and a client certificate for targets that ask for one (mTLS).
//! Requests through a [`TlsClient`] also record when the leaf certificate
//! the server showed expires, for the probe's expiry metric and its
//! `cert_expiry_seconds` condition.
//!
//! [`send`] is the HTTP/1.1 client over such a connection, with the same
//! connect, first-byte and between-bytes timeouts a guest can set as
//! `wasmtime-wasi-http`'s own client has.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// What a component's `tls` table says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A PEM bundle of CA certificates trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// The name to send (SNI) and to verify the certificate against,
    /// instead of the URL's host.
    pub server_name: Option<String>,
    /// A client certificate chain (PEM), for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// A TLS client configuration, built once from [`TlsSettings`].
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The client `settings` describe; the error names the file or the
    /// name that is wrong and why.
    pub fn new(settings: &TlsSettings) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &settings.ca_file {
            let certificates = read_certificates(path, "ca_file")?;
            for certificate in certificates {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "ca_file {}: a certificate in it is not a usable CA: {e}",
                        path.display()
                    )
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots);
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "cert_file")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!(
                        "key_file {}: no PEM private key in it ({e}): give the client certificate's key",
                        key.display()
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!(
                        "cert_file {} and key_file: they do not make a client certificate: {e}",
                        cert.display()
                    )
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err("cert_file without key_file: give both, or neither".into())
            }
            (None, Some(_)) => {
                return Err("key_file without cert_file: give both, or neither".into())
            }
        };
        let server_name =
            match &settings.server_name {
                Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                    format!("server_name {name:?} is not a DNS name or an IP address")
                })?),
                None => None,
            };
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The certificates of the PEM file at `path` (the `key` that named it, for
/// errors): at least one.
fn read_certificates(path: &PathBuf, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{key} {} holds no certificate: give a PEM file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        ));
    }
    Ok(certificates)
}

/// When `der`, an X.509 certificate, stops being valid, in Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

/// What [`send`] resolves to, as `wasmtime-wasi-http` takes it.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request` (an `https` one) over a TLS connection made with
/// `client`, and stores the leaf certificate's expiry in `expiry`.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    client: Arc<TlsClient>,
    expiry: Arc<AtomicI64>,
) -> Result<Sent, Error> {
    let uri = request.uri().clone();
    let host = uri
        .host()
        .ok_or(Error::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
        options
            .as_ref()
            .and_then(pick)
            .unwrap_or(Duration::from_secs(600))
    };
    let connect_timeout = timeout(|o| o.connect_timeout);
    let first_byte_timeout = timeout(|o| o.first_byte_timeout);
    let between_bytes = timeout(|o| o.between_bytes_timeout).max(Duration::from_nanos(1));

    let tcp = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;
    let name = match &client.server_name {
        Some(name) => name.clone(),
        None => ServerName::try_from(host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?,
    };
    let connector = tokio_rustls::TlsConnector::from(client.config.clone());
    let tls = tokio::time::timeout(connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Tls)?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    if let Some(seconds) = leaf.and_then(|c| not_after(c)) {
        expiry.store(seconds, Ordering::SeqCst);
    }
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(tls)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let driven = tokio::spawn(connection);
    // On the wire, the request line carries the path only.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body| BetweenBytes::new(body, between_bytes).boxed_unsync());
    let io = async move {
        match driven.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(error)) => Err(Error::from(error)),
        }
    };
    Ok((response, Box::new(io)))
}

/// A response body that fails once no bytes come for `limit`.
struct BetweenBytes {
    body: Incoming,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl BetweenBytes {
    fn new(body: Incoming, limit: Duration) -> Self {
        Self {
            body,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Error::from(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tls_files_are_refused_naming_them() {
        let dir = std::env::temp_dir().join(format!("pulse-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsSettings {
            ca_file: Some(dir.join("missing.pem")),
            ..TlsSettings::default()
        };
        let error = TlsClient::new(&missing).unwrap_err();
        assert!(
            error.contains("cannot read ca_file") && error.contains("missing.pem"),
            "{error}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = TlsClient::new(&TlsSettings {
            ca_file: Some(empty),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(error.contains("holds no certificate"), "{error}");
        let half = TlsSettings {
            key_file: Some(dir.join("key.pem")),
            ..TlsSettings::default()
        };
        assert!(TlsClient::new(&half)
            .unwrap_err()
            .contains("key_file without cert_file"));
        let name = TlsSettings {
            server_name: Some("not a name!".into()),
            ..TlsSettings::default()
        };
        assert!(TlsClient::new(&name).unwrap_err().contains("server_name"));
        assert!(TlsClient::new(&TlsSettings::default()).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
