//! TLS from PEM files for both ends of a connection: the coordinator's certificate and, for mutual TLS, the authority its clients' certificates must come from; a client's trusted authority and its own certificate.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// A certificate chain and its private key, PEM.
fn identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    Ok(Identity::from_pem(
        read("certificate", cert)?,
        read("private key", key)?,
    ))
}

/// The coordinator's side: its certificate and key, and (mutual TLS) the authority every
/// client's certificate must be signed by.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn config(&self) -> Result<ServerTlsConfig, String> {
        let mut config = ServerTlsConfig::new().identity(identity(&self.cert, &self.key)?);
        if let Some(ca) = &self.client_ca {
            // Required, not optional: a client without a certificate from it is turned away
            // during the handshake, before any call.
            config = config
                .client_ca_root(Certificate::from_pem(read("client CA certificate", ca)?))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

/// A client's side: the authority that signed the coordinator's certificate and, when the
/// coordinator asks for one, this client's certificate and key.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// The TLS settings for `https://` coordinator URLs (`domain` is the URL's host, which
    /// the coordinator's certificate must name).
    pub fn config(&self, domain: &str) -> Result<ClientTlsConfig, String> {
        let ca = self.ca.as_ref().ok_or(
            "an https:// coordinator needs --tls-ca FILE: the authority that signed its certificate",
        )?;
        let mut config = ClientTlsConfig::new()
            .domain_name(domain)
            .ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => config = config.identity(identity(cert, key)?),
            (None, None) => {}
            _ => return Err("--tls-cert and --tls-key go together".into()),
        }
        Ok(config)
    }

    /// `endpoint` for `url`: over TLS for `https://`, as it is for `http://` (when no TLS
    /// file is given: naming one for a plain-text URL is a mistake worth stopping on).
    pub fn endpoint(&self, endpoint: Endpoint, url: &str) -> Result<Endpoint, String> {
        let given = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        let uri = endpoint.uri();
        match uri.scheme_str() {
            Some("https") => {
                let host = uri.host().ok_or_else(|| format!("{url} names no host"))?;
                // An IPv6 host comes in brackets; the certificate names the address itself.
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let config = self.config(&host)?;
                endpoint
                    .tls_config(config)
                    .map_err(|e| format!("TLS settings for {url}: {e}"))
            }
            _ if given => Err(format!(
                "TLS files were given but {url} is plain http://; use https://"
            )),
            _ => Ok(endpoint),
        }
    }
}
