//! The connection to the IMAP server: TCP, then TLS (implicit or STARTTLS; plain text only
//! to loopback), then login. The password goes only to the server.

use super::*;

/// A TCP connection, with or without TLS.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type ImapSession = async_imap::Session<ImapStream>;

pub(super) fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn tls_connector(settings: &ImapSettings) -> Result<tokio_rustls::TlsConnector, ImapError> {
    use tokio_rustls::rustls;
    let server = settings.host.clone();
    let tls_error = |message: String| ImapError::Tls {
        server: server.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = &settings.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_error(format!("cannot read CA file {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| tls_error(format!("bad certificate in {}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| tls_error(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

pub(super) async fn tls_wrap(settings: &ImapSettings, tcp: TcpStream) -> Result<ImapStream, ImapError> {
    let server = settings.host.clone();
    let name = rustls_pki_types::ServerName::try_from(settings.host.clone()).map_err(|e| ImapError::Tls {
        server: server.clone(),
        message: e.to_string(),
    })?;
    let stream = tls_connector(settings)?
        .connect(name, tcp)
        .await
        .map_err(|e| ImapError::Tls {
            server,
            message: e.to_string(),
        })?;
    Ok(ImapStream::Tls(Box::new(stream)))
}

/// Connects, protects and logs in. The password goes only to the server.
pub async fn connect(settings: &ImapSettings) -> Result<ImapSession, ImapError> {
    let server = format!("{}:{}", settings.host, settings.port);
    if settings.security == TransportSecurity::Plain && !is_loopback(&settings.host) {
        return Err(ImapError::PlainNotLoopback {
            host: settings.host.clone(),
        });
    }
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((settings.host.as_str(), settings.port)),
    )
    .await
    .map_err(|_| ImapError::Connect {
        server: server.clone(),
        source: std::io::ErrorKind::TimedOut.into(),
    })?
    .map_err(|source| ImapError::Connect {
        server: server.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let stream = match settings.security {
        TransportSecurity::Plain => ImapStream::Plain(tcp),
        TransportSecurity::Tls => tls_wrap(settings, tcp).await?,
        TransportSecurity::Starttls => {
            let mut client = async_imap::Client::new(ImapStream::Plain(tcp));
            within("reading the greeting", async {
                client.read_response().await.map_err(|e| ImapError::Protocol {
                    context: "reading the greeting",
                    source: e.into(),
                })
            })
            .await?;
            within("starting TLS", async {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .imap("starting TLS")
            })
            .await?;
            let ImapStream::Plain(tcp) = client.into_inner() else {
                unreachable!("STARTTLS starts from a plain stream")
            };
            tls_wrap(settings, tcp).await?
        }
    };
    let mut client = async_imap::Client::new(stream);
    if settings.security != TransportSecurity::Starttls {
        // async-imap does not read the greeting itself (there is none after STARTTLS).
        within("reading the greeting", async {
            client.read_response().await.map_err(|e| ImapError::Protocol {
                context: "reading the greeting",
                source: e.into(),
            })
        })
        .await?;
    }
    within("logging in", async {
        client
            .login(&settings.user, settings.password.expose_secret())
            .await
            .map_err(|(e, _)| ImapError::Login {
                user: settings.user.clone(),
                message: e.to_string(),
            })
    })
    .await
}
