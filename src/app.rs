//! The composition root: settings in, a running service out. `main`, the command line, the
//! tests and the benchmarks build the service here, so there is one place that says what the
//! service is made of (as zero2prod's `startup.rs` does).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::calendar::WorkingCalendar;
use crate::config::Settings;
use crate::engine::{Clock, Engine, EngineConfig};
use crate::mail::MailSettings;
use crate::pdf::PdfReader;
use crate::pdf::signature::TrustAnchors;
use crate::pdf::worker::{WorkerPool, WorkerSettings};
use crate::policy::PolicySettings;
use crate::storage::Db;
use crate::workflow::WorkflowSet;

/// The service, built from settings: the engine (database migrated, workflows and calendar
/// loaded), and the settings its workers run with.
pub struct App {
    engine: Engine,
    settings: Settings,
}

/// Loads and checks the workflow files: a bad one stops every command with the same error.
pub fn load_workflows(settings: &Settings) -> Result<WorkflowSet> {
    WorkflowSet::load(&settings.workflows_dir, &settings.templates_dir).context("loading workflows")
}

/// What a test or a benchmark may choose that a deployment does not: the clock, and whether
/// PDFs are read in this process. A deployment takes the defaults (the system clock, PDFs
/// read by worker processes under OS limits).
#[derive(Default)]
pub struct BuildOptions {
    pub clock: Option<Arc<dyn Clock>>,
    pub pdf_reader: Option<PdfReader>,
}

impl BuildOptions {
    /// PDFs read in this process, on the system clock: for benchmarks and examples, which
    /// measure the engine rather than the pipe to a worker.
    pub fn in_process() -> BuildOptions {
        BuildOptions {
            clock: None,
            pdf_reader: Some(PdfReader::InProcess),
        }
    }
}

/// What the engine needs besides the database, from settings. PDFs are read by this same
/// binary, started as workers under OS limits, unless `pdf_reader` says otherwise.
fn engine_config(settings: &Settings, pdf_reader: Option<PdfReader>) -> Result<EngineConfig> {
    let pdf_reader = match pdf_reader {
        Some(reader) => reader,
        None => PdfReader::Workers(Arc::new(WorkerPool::new(
            WorkerSettings::current_exe().context("finding our own executable for the PDF workers")?,
        ))),
    };
    Ok(EngineConfig {
        policy: PolicySettings {
            nhs_domains: settings.nhs_domains.clone(),
            trust_anchors: match &settings.signature_trust_store {
                Some(path) => {
                    let anchors = TrustAnchors::from_pem_file(path)?;
                    tracing::info!(path = %path.display(), certificates = anchors.len(), "digital signatures are judged against this trust store");
                    anchors
                }
                None => TrustAnchors::default(),
            },
        },
        mail: MailSettings {
            authserv_id: settings.authserv_id.clone(),
            our_addresses: vec![settings.mailer.from_address.clone()],
        },
        limits: settings.extract_limits(),
        pdf_reader,
        sender_checker: crate::dkim::SenderChecker::new(settings.sender_check.clone())?,
        credential_keys: Arc::new(crate::credentials::CredentialKeys::load_or_create(
            &settings.credential_key_file(),
        )?),
    })
}

impl App {
    /// Opens (and migrates) the database, loads the workflows and the calendar.
    pub async fn build(settings: &Settings) -> Result<App> {
        App::build_with(settings, BuildOptions::default()).await
    }

    /// [`App::build`], with a test's or a benchmark's clock or PDF reader.
    pub async fn build_with(settings: &Settings, options: BuildOptions) -> Result<App> {
        let workflows = load_workflows(settings)?;
        let calendar = match &settings.bank_holidays_file {
            Some(path) => WorkingCalendar::load(path)?,
            None => WorkingCalendar::shipped(),
        };
        let db = Db::connect(&settings.database_url).await?;
        // Events written before the log was chained are hashed once, before anything appends.
        let sealed = crate::audit::seal_unsealed(&db).await?;
        if sealed > 0 {
            tracing::info!(sealed, "events written before the hash chain were sealed into it");
        }
        let mut engine = Engine::new(db, workflows, calendar, engine_config(settings, options.pdf_reader)?);
        if let Some(clock) = options.clock {
            engine = engine.with_clock(clock);
        }
        Ok(App {
            engine,
            settings: settings.clone(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine alone, for a caller that runs no workers (tests, benchmarks, one command).
    pub fn into_engine(self) -> Engine {
        self.engine
    }

    /// One round of every worker: drain the mail source, fire due timers, run due jobs and
    /// send due mail (`serve --once`, and cron-driven deployments).
    pub async fn run_once(self) -> Result<()> {
        let (engine, settings) = (&self.engine, &self.settings);
        let dispatcher =
            crate::outbox::Dispatcher::new(engine.clone(), settings.mailer.clone(), &settings.templates_dir)?;
        let scheduler = crate::scheduler::Scheduler::new(engine.clone(), settings.scheduler.clone())?;
        match &settings.imap {
            Some(imap) => {
                let summary = crate::ingest::imap::ImapPoller::new(engine.clone(), imap.clone())
                    .drain_once()
                    .await?;
                let lease = if summary.lease_held {
                    ""
                } else {
                    " (another instance holds the mailbox lease)"
                };
                println!(
                    "{}: {} ingested, {} already ingested, {} quarantined{lease}",
                    imap.mailbox_key(),
                    summary.ingested,
                    summary.already_ingested,
                    summary.quarantined
                );
            }
            None => {
                crate::ingest::dropfolder::scan_once(engine, &settings.drop_folder).await?;
            }
        }
        let fired = scheduler.fire_due_timers().await?;
        let jobs = scheduler.run_due_jobs().await?;
        let rechecked = engine.recheck_senders().await?;
        let sent = dispatcher.dispatch_due().await?;
        tracing::info!(
            timers = fired.len(),
            jobs = jobs.len(),
            senders_rechecked = rechecked,
            sent = sent.sent,
            "one round done"
        );
        engine.db().close().await;
        Ok(())
    }

    /// Runs the service until Ctrl-C or SIGTERM: the mail source (IMAP or the drop folder),
    /// the outbox dispatcher, the scheduler and the web app side by side. In-flight mail and
    /// timers finish their current step before it returns.
    pub async fn run_until_stopped(self, interval: Duration) -> Result<()> {
        let (engine, settings) = (&self.engine, &self.settings);
        let dispatcher =
            crate::outbox::Dispatcher::new(engine.clone(), settings.mailer.clone(), &settings.templates_dir)?;
        let scheduler = crate::scheduler::Scheduler::new(engine.clone(), settings.scheduler.clone())?;
        let mut conn = engine.db().pool.acquire().await.context("connecting")?;
        if crate::users::list(&mut conn).await?.is_empty() {
            // A fresh installation: nobody can sign in until an admin exists.
            println!(
                "No staff accounts yet. Create the first admin, then open the link it prints to set a password:\n    countersign users add you@nhs.net --role admin"
            );
        }
        drop(conn);
        let (stop_tx, stop_rx) = crate::ingest::shutdown_channel();
        tokio::spawn(async move {
            crate::ingest::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        // The reports add up kept days: keep every past day not kept yet now, in the
        // background, rather than on a manager's first request (housekeeping keeps each new
        // one after).
        let warming = engine.clone();
        tokio::spawn(async move {
            // Closed cases have no due time: a database from before that rule gets it now,
            // so the open queue's walk in due order never steps over closed cases.
            match warming.clear_due_times_of_closed_cases().await {
                Ok(0) => {}
                Ok(cases) => tracing::info!(cases, "cleared the due times of closed cases"),
                Err(error) => tracing::warn!(error = %error, "clearing the due times of closed cases failed"),
            }
            let kept = crate::reports::keep_all_past_days(&warming).await;
            warming.db().shed_memory().await;
            match kept {
                Ok(days) => tracing::info!(days, "kept the report figures of past days"),
                Err(error) => {
                    tracing::warn!(error = %error, "keeping past days' report figures failed; reports work them out on request")
                }
            }
        });
        // What the service freed goes back to the system once a minute. A trim right after
        // each heavy job is not enough: the start-up job and the first night's jobs run side by
        // side, and the last of their frees can come after the last trim (an idle service on
        // PostgreSQL at a million cases stayed at 87–106 MiB; trimmed again, 36–44 MiB).
        tokio::spawn(async {
            let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
            every_minute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every_minute.tick().await;
                crate::storage::release_freed_heap();
            }
        });
        let mut web = crate::web::AppState::new(
            engine.clone(),
            &settings.templates_dir,
            settings.web_secure_cookies,
            settings.web_base_url.clone(),
        )
        .await?;
        web.staff_any_domain = settings.staff_any_domain;
        web.ready_max_poll_age_ms = settings.ready_max_poll_age_secs.saturating_mul(1000) as i64;
        web.password_sign_in = settings.password_sign_in;
        web.password_warning_days = settings.scheduler.password_warning_days;
        if let Some(oidc) = &settings.oidc {
            web.oidc = Some(
                crate::web::oidc::OidcSignIn::new(oidc.clone(), &settings.web_base_url)
                    .context("setting up sign-in through the provider")?,
            );
        }
        let poller = settings
            .imap
            .as_ref()
            .map(|imap| crate::ingest::imap::ImapPoller::new(engine.clone(), imap.clone()));
        let drop_folder = crate::ingest::dropfolder::DropFolder::watching(&settings.drop_folder);
        Arc::make_mut(&mut web.live_mail_sources).push(match (&poller, &settings.imap) {
            (Some(poller), Some(imap)) => (imap.mailbox_key(), poller.health()),
            _ => (format!("drop:{}", settings.drop_folder.display()), drop_folder.health()),
        });
        let workers = {
            let (d_stop, s_stop, w_stop) = (stop_rx.clone(), stop_rx.clone(), stop_rx.clone());
            let dispatching = async move { dispatcher.run_until_stopped(d_stop).await };
            let scheduling = async move { scheduler.run_until_stopped(s_stop).await };
            let bind = settings.web_bind.clone();
            let serving = async move {
                if let Err(error) = crate::web::serve(web, &bind, w_stop).await {
                    tracing::error!(error = %error, bind = %bind, "the web app stopped");
                }
            };
            tokio::spawn(async move { tokio::join!(dispatching, scheduling, serving) })
        };
        match (poller, &settings.imap) {
            (Some(poller), Some(imap)) => {
                println!("polling {} (Ctrl-C to stop)", imap.mailbox_key());
                poller.run_until_stopped(stop_rx).await;
            }
            _ => crate::ingest::dropfolder::run(engine, drop_folder, interval, stop_rx).await?,
        }
        let _ = workers.await;
        engine.db().close().await;
        Ok(())
    }
}
