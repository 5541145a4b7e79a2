//! Where mail goes: an SMTP server over rustls (TLS, STARTTLS, or plain to loopback only),
//! or, by default, `.eml` files in a folder.

use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::OutboxError;
use crate::config::{MailerSettings, TransportSecurity};

pub(super) enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// The embedded default: `.eml` files in a folder.
    Files(AsyncFileTransport<Tokio1Executor>),
}

impl Transport {
    /// The transport the settings name.
    pub(super) fn from_settings(settings: &MailerSettings) -> Result<Transport, OutboxError> {
        Ok(match &settings.smtp {
            None => {
                std::fs::create_dir_all(&settings.mail_folder).map_err(|e| OutboxError::Transport {
                    host: settings.mail_folder.display().to_string(),
                    message: e.to_string(),
                })?;
                Transport::Files(AsyncFileTransport::<Tokio1Executor>::new(&settings.mail_folder))
            }
            Some(smtp) => {
                let failed = |e: lettre::transport::smtp::Error| OutboxError::Transport {
                    host: smtp.host.clone(),
                    message: e.to_string(),
                };
                let tls_parameters = || -> Result<TlsParameters, OutboxError> {
                    let mut tls = TlsParameters::builder(smtp.host.clone());
                    if let Some(path) = &smtp.ca_file {
                        let pem = std::fs::read(path).map_err(|e| OutboxError::Transport {
                            host: smtp.host.clone(),
                            message: format!("cannot read CA file {}: {e}", path.display()),
                        })?;
                        tls = tls.add_root_certificate(Certificate::from_pem(&pem).map_err(failed)?);
                    }
                    tls.build_rustls().map_err(failed)
                };
                let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host);
                let mut builder = match smtp.security {
                    TransportSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters()?)),
                    TransportSecurity::Starttls => builder.tls(Tls::Required(tls_parameters()?)),
                    TransportSecurity::Plain => {
                        let loopback = smtp.host == "localhost"
                            || smtp.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                        if !loopback {
                            return Err(OutboxError::Transport {
                                host: smtp.host.clone(),
                                message: "plain SMTP is only allowed to a loopback address; use tls or starttls".into(),
                            });
                        }
                        builder
                    }
                };
                builder = builder.port(smtp.port).timeout(Some(Duration::from_secs(30)));
                if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
                    builder = builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_string()));
                }
                Transport::Smtp(builder.build())
            }
        })
    }

    /// Sends one message: `Err((permanent, why))` when it was not taken.
    pub(super) async fn send(&self, message: Message) -> Result<(), (bool, String)> {
        match self {
            Transport::Smtp(smtp) => smtp
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| (e.is_permanent(), e.to_string())),
            Transport::Files(files) => files
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| (false, e.to_string())),
        }
    }
}
