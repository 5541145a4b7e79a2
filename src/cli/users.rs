//! `countersign users`: staff accounts.

use anyhow::{Context, Result};
use clap::Subcommand;

use super::build_engine;
use crate::config::Settings;
use crate::workflow::ActorRole;

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user and print a one-time set-password link (there are no default passwords).
    Add {
        email: String,
        #[arg(long, default_value = "caseworker")]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    /// Print a new one-time set-password link for a user.
    Reset {
        email: String,
    },
    Disable {
        email: String,
    },
    /// Enable a disabled account again.
    Enable {
        email: String,
    },
    /// Lift a lockout from failed sign-ins.
    Unlock {
        email: String,
    },
    /// Change a user's role; their sessions end.
    Role {
        email: String,
        role: String,
    },
    /// Match an account to its subject (`sub`) at the sign-in provider, for `oidc_claim =
    /// "sub"`; `--clear` removes it.
    Subject {
        email: String,
        subject: Option<String>,
        #[arg(long)]
        clear: bool,
    },
}

pub(super) async fn users_command(settings: &Settings, command: UsersCommand) -> Result<()> {
    let engine = build_engine(settings).await?;
    let mut conn = engine.db().pool.acquire().await?;
    let now = engine.now_ms();
    let link = |token: &str| crate::users::password_link(&settings.web_base_url, token);
    match command {
        UsersCommand::Add { email, role, name } => {
            let role = ActorRole::parse(&role)
                .filter(|r| *r != ActorRole::System)
                .with_context(|| format!("unknown role `{role}` (caseworker, manager, admin)"))?;
            crate::users::check_staff_address(&email, &settings.nhs_domains, settings.staff_any_domain)?;
            let name = name.unwrap_or_else(|| email.split('@').next().unwrap_or(&email).to_string());
            let (user, token) = crate::users::add(&mut conn, &email, &name, role, now).await?;
            println!("added {} ({})", user.email, user.role.as_str());
            println!("one-time set-password link (expires in 24 hours): {}", link(&token));
        }
        UsersCommand::List => {
            for u in crate::users::list(&mut conn).await? {
                println!(
                    "{:<40} {:<12} {}",
                    u.email,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "active" }
                );
            }
        }
        UsersCommand::Reset { email } => {
            let user = crate::users::find_by_email(&mut conn, &email)
                .await?
                .with_context(|| format!("no user {email}"))?;
            let token = crate::users::issue_password_token(&mut conn, user.id, now).await?;
            println!(
                "one-time set-password link for {} (expires in 24 hours): {}",
                user.email,
                link(&token)
            );
        }
        UsersCommand::Disable { email } => {
            crate::users::set_disabled(&mut conn, &email, true).await?;
            println!("disabled {email}");
        }
        UsersCommand::Enable { email } => {
            crate::users::set_disabled(&mut conn, &email, false).await?;
            println!("enabled {email}; `users reset {email}` prints a new set-password link");
        }
        UsersCommand::Unlock { email } => {
            crate::users::unlock(&mut conn, &email).await?;
            println!("unlocked {email}");
        }
        UsersCommand::Role { email, role } => {
            let role = ActorRole::parse(&role)
                .filter(|r| *r != ActorRole::System)
                .with_context(|| format!("unknown role `{role}` (caseworker, manager, admin)"))?;
            let user = crate::users::set_role(&mut conn, &email, role).await?;
            println!(
                "{} is now {}; their sessions have ended",
                user.email,
                user.role.as_str()
            );
        }
        UsersCommand::Subject { email, subject, clear } => {
            let email = email.trim().to_lowercase();
            let subject = if clear {
                None
            } else {
                Some(subject.context("give the subject, or --clear")?)
            };
            if !crate::storage::set_oidc_subject(&mut conn, &email, subject.as_deref()).await? {
                anyhow::bail!("no user {email}");
            }
            match subject {
                Some(subject) => println!("{email} signs in as provider subject {subject}"),
                None => println!("{email} has no provider subject now"),
            }
        }
    }
    drop(conn);
    engine.db().close().await;
    Ok(())
}
