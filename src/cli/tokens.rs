//! `countersign tokens`: bearer tokens for service accounts that use the JSON API.

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::workflow::ActorRole;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token and print it, once: only its hash is kept.
    Create {
        /// What calls with it are logged as (`token:<name>`).
        #[arg(long)]
        name: String,
        /// caseworker, manager or admin
        #[arg(long, default_value = "caseworker")]
        role: String,
        /// Days until it stops working (none: until revoked).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Every token: its role, expiry, last use, and whether it is revoked.
    List,
    /// Stop a token working, from now on.
    Revoke { name: String },
}

pub(super) async fn tokens_command(settings: &Settings, command: TokensCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    let now = engine.now_ms();
    let when = |at: Option<i64>| {
        at.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "-".into())
    };
    match command {
        TokensCommand::Create {
            name,
            role,
            expires_in_days,
        } => {
            let role = ActorRole::parse(&role)
                .filter(|r| *r != ActorRole::System)
                .with_context(|| format!("unknown role `{role}` (caseworker, manager, admin)"))?;
            let expires_at = expires_in_days.map(|days| now + i64::from(days) * 86_400_000);
            let (token, secret) = crate::tokens::issue(&mut conn, &name, role, expires_at, now).await?;
            eprintln!(
                "token `{}` ({}), expires {}: shown once, keep it in your secret store",
                token.name,
                token.role.as_str(),
                when(token.expires_at)
            );
            println!("{secret}");
        }
        TokensCommand::List => {
            println!(
                "{:<32} {:<11} {:<17} {:<17} status",
                "name", "role", "expires", "last used"
            );
            for t in crate::storage::list_api_tokens(&mut conn).await? {
                let status = match (t.revoked_at, t.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(at)) if at <= now => "expired",
                    _ => "active",
                };
                println!(
                    "{:<32} {:<11} {:<17} {:<17} {status}",
                    t.name,
                    t.role.as_str(),
                    when(t.expires_at),
                    when(t.last_used_at)
                );
            }
        }
        TokensCommand::Revoke { name } => {
            crate::tokens::revoke(&mut conn, &name, now).await?;
            println!("revoked {name}");
        }
    }
    drop(conn);
    engine.db().close().await;
    Ok(())
}
