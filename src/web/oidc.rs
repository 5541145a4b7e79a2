//! Staff sign-in through an OpenID Connect provider, as NHS staff sign in to national services
//! through NHS Care Identity Service 2: the authorisation code flow with PKCE, a `state` that
//! is taken once, and a nonce; the ID token's signature checked with the provider's published
//! keys (JWKS), and its issuer, audience, expiry and nonce checked by the openidconnect crate.
//!
//! The provider says who someone is; Countersign says what they may do. The account is found
//! by one configured claim (the email address, or the subject an admin matched to the
//! account), and its role is the account's, never a claim's. Someone the provider knows but
//! Countersign does not is refused, as is a disabled account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_csrf::CsrfToken;
use axum_extra::extract::CookieJar;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken as OidcState, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::auth::local_path;
use super::{Access, AppState, Route, WebError};
use crate::config::{OidcClaim, OidcSettings};
use crate::storage;

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/sign-in/oidc", Access::Public, start),
        Route::get("/sign-in/oidc/callback", Access::Public, callback),
    ]
}

/// How long a sign-in may take at the provider before its `state` is no longer accepted.
const SIGN_IN_WITHIN: Duration = Duration::from_secs(10 * 60);
/// How long the provider's discovery document and keys are used before being read again.
const METADATA_FRESH_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the sign-in provider's address is not a URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the sign-in provider: {0}")]
    Discovery(String),
    #[error("the sign-in provider refused the code: {0}")]
    Exchange(String),
    #[error("the sign-in provider sent no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    InvalidToken(String),
    #[error("the ID token has no {0} claim")]
    MissingClaim(&'static str),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The configured provider, its discovery document (cached), and an HTTP client that follows
/// no redirects (the crate's advice against SSRF).
pub struct OidcSignIn {
    settings: OidcSettings,
    redirect_url: RedirectUrl,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl OidcSignIn {
    /// The provider staff sign in through; `base_url` is the app's address, where the
    /// provider sends people back to (`/sign-in/oidc/callback`).
    pub fn new(settings: OidcSettings, base_url: &str) -> Result<Arc<OidcSignIn>, OidcError> {
        let callback = format!("{}/sign-in/oidc/callback", base_url.trim_end_matches('/'));
        let redirect_url = RedirectUrl::new(callback.clone()).map_err(|_| OidcError::BadUrl(callback))?;
        IssuerUrl::new(settings.issuer.clone()).map_err(|_| OidcError::BadUrl(settings.issuer.clone()))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(OidcSignIn {
            settings,
            redirect_url,
            http,
            metadata: tokio::sync::Mutex::new(None),
        }))
    }

    /// The button's words on the sign-in page.
    pub fn label(&self) -> &str {
        &self.settings.label
    }

    /// The provider's discovery document and keys, read again after a while (keys rotate).
    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, OidcError> {
        let mut cached = self.metadata.lock().await;
        if !fresh
            && let Some((at, metadata)) = cached.as_ref()
            && at.elapsed() < METADATA_FRESH_FOR
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|_| OidcError::BadUrl(self.settings.issuer.clone()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        *cached = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings
                .client_secret
                .as_ref()
                .map(|secret| ClientSecret::new(secret.expose_secret().to_string())),
        )
        .set_redirect_uri(self.redirect_url.clone())
    }

    /// Where to send someone to sign in, and what to remember until they come back: the
    /// `state`, the nonce and the PKCE verifier.
    async fn authorisation(&self) -> Result<(String, OidcState, Nonce, PkceCodeVerifier), OidcError> {
        let client = self.client(self.metadata(false).await?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                OidcState::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((url.to_string(), state, nonce, verifier))
    }

    /// Exchanges the code (with the PKCE verifier) and checks the ID token: its signature by
    /// the provider's keys, issuer, audience, expiry and nonce. The claim accounts are matched
    /// by.
    async fn identify(&self, code: String, nonce: &str, verifier: String) -> Result<String, OidcError> {
        let client = self.client(self.metadata(false).await?);
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        let nonce = Nonce::new(nonce.to_string());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            // The provider may have rotated its keys since they were read: read them again
            // once, then the token must verify.
            Err(first) => {
                let client = self.client(self.metadata(true).await?);
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|_| OidcError::InvalidToken(first.to_string()))?
                    .clone()
            }
        };
        match self.settings.match_claim {
            OidcClaim::Subject => Ok(claims.subject().as_str().to_string()),
            OidcClaim::Email => {
                let (email, verified) = match claims.email() {
                    Some(email) => (email.as_str().to_string(), claims.email_verified()),
                    // Providers that follow the core spec strictly (CIS2 among them) put the
                    // profile claims in UserInfo, not the ID token: asked with the access
                    // token, and only for the subject the verified ID token names.
                    None => {
                        let info: openidconnect::core::CoreUserInfoClaims = client
                            .user_info(response.access_token().clone(), Some(claims.subject().clone()))
                            .map_err(|e| OidcError::Exchange(error_chain(&e)))?
                            .request_async(&self.http)
                            .await
                            .map_err(|e| OidcError::InvalidToken(format!("UserInfo: {}", error_chain(&e))))?;
                        let email = info.email().ok_or(OidcError::MissingClaim("email"))?;
                        (email.as_str().to_string(), info.email_verified())
                    }
                };
                if verified == Some(false) {
                    return Err(OidcError::InvalidToken("its email address is not verified".into()));
                }
                Ok(email.trim().to_lowercase())
            }
        }
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(serde::Deserialize, Default)]
pub struct StartQuery {
    #[serde(default)]
    next: String,
}

/// Sends the visitor to the provider, remembering the sign-in until they come back.
pub async fn start(State(state): State<AppState>, Query(query): Query<StartQuery>) -> Result<Response, WebError> {
    let Some(oidc) = &state.oidc else {
        return Err(WebError::NotFound);
    };
    let (url, csrf, nonce, verifier) = oidc
        .authorisation()
        .await
        .map_err(|e| WebError::internal(format!("starting a sign-in: {e}")))?;
    let next = local_path(&query.next).unwrap_or("");
    let mut conn = state.engine.db().pool.acquire().await?;
    storage::insert_oidc_login(
        &mut conn,
        csrf.secret(),
        nonce.secret(),
        verifier.secret(),
        next,
        state.engine.now_ms(),
    )
    .await?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(serde::Deserialize, Default)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Someone back from the provider: the sign-in is taken by its `state` (once), the code
/// exchanged, the ID token checked, the account found by the configured claim, a session
/// started.
pub async fn callback(
    State(state): State<AppState>,
    jar: CookieJar,
    token: CsrfToken,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, WebError> {
    let Some(oidc) = state.oidc.clone() else {
        return Err(WebError::NotFound);
    };
    let refuse = async |why: &str| -> Result<Response, WebError> {
        let page = super::auth::sign_in_refused(&state, &token, why).await?;
        Ok((StatusCode::UNAUTHORIZED, token.clone(), page).into_response())
    };
    if let Some(error) = &query.error {
        warn!(error = %error, "the sign-in provider returned an error");
        return refuse("The sign-in service did not sign you in. Try again.").await;
    }
    let (Some(code), Some(returned_state)) = (query.code, query.state) else {
        return refuse("That sign-in link is incomplete. Start again.").await;
    };
    let now = state.engine.now_ms();
    let mut conn = state.engine.db().pool.acquire().await?;
    let taken = storage::take_oidc_login(&mut conn, &returned_state, now - SIGN_IN_WITHIN.as_millis() as i64).await?;
    drop(conn);
    let Some((nonce, verifier, next)) = taken else {
        warn!("a sign-in came back with a state that is unknown, used already or expired");
        return refuse("That sign-in has expired or was used already. Start again.").await;
    };
    let identity = match oidc.identify(code, &nonce, verifier).await {
        Ok(identity) => identity,
        Err(error) => {
            warn!(error = %error, "a sign-in was refused");
            return refuse("The sign-in service's answer could not be trusted, so you are not signed in. Try again, and tell an admin if it happens again.").await;
        }
    };
    let mut conn = state.engine.db().pool.acquire().await?;
    let user = match oidc.settings.match_claim {
        OidcClaim::Email => storage::user_by_email(&mut conn, &identity).await?,
        OidcClaim::Subject => storage::user_by_oidc_subject(&mut conn, &identity).await?,
    };
    let Some(user) = user.filter(|u| !u.disabled) else {
        drop(conn);
        warn!(identity = %identity, "signed in at the provider, but no enabled account matches");
        return refuse("You are signed in to NHS Care Identity Service, but you have no Countersign account (or it is disabled). Ask an admin to add you.").await;
    };
    info!(user = %user.email, "signed in through the provider");
    super::auth::signed_in(&state, &mut conn, jar, &user, &next).await
}
