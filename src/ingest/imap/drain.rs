//! One poll of the mailbox: a pipeline that fetches and prepares the next group of messages
//! while it records the previous one in one transaction, then moves what it recorded (in UID
//! order, so the saved position never passes a message not yet stored).

use super::*;

/// Messages committed before they are moved out of the mailbox together.
const MOVE_BATCH: usize = 100;
/// Groups fetched and not yet recorded: one being prepared while the one before it records.
const PREPARING_GROUPS: usize = 2;
use crate::ingest::{GROUP_BYTES, GROUP_MESSAGES};

/// Messages taken but not yet moved.
#[derive(Debug, Default)]
pub(super) struct MoveBatch {
    pub(super) processed: Vec<u32>,
    /// UID, source and reason.
    pub(super) quarantined: Vec<(u32, String, String)>,
    /// The highest UID dealt with, moved or not there any more.
    pub(super) last_uid: Option<u32>,
}

/// Where a message came from, as stored with it and in ingest errors: the mailbox's key, its
/// UIDVALIDITY and the message's UID.
pub(super) fn message_source(key: &str, uidvalidity: i64, uid: u32) -> String {
    format!("{key};UIDVALIDITY={uidvalidity};UID={uid}")
}

/// A message fetched and not yet recorded, in the drain's pipeline.
pub(super) enum InFlight {
    /// Expunged by someone else between the search and the fetch.
    Gone(u32),
    /// Over the size limit, or set aside after it stopped the service before: quarantined
    /// without reading it.
    TooLarge(u32, String),
    /// Being prepared (parsed, its PDFs read) on another worker: the raw bytes come back with it.
    Preparing(u32, tokio::task::JoinHandle<(Vec<u8>, crate::engine::PreparedEmail)>),
}

/// What recording a message means for it on the server.
pub(super) enum Recorded {
    /// Nothing there to move.
    Gone,
    /// Stored (now or before): move it to the processed folder.
    Stored { already_ingested: bool },
    /// Move it to the quarantine folder, for this reason. `stored` is as for `Stored` when the
    /// message was stored all the same (a malformed email is kept on a case), `None` if not.
    Quarantine { reason: String, stored: Option<bool> },
    /// Leave it, and stop this poll with the error: it is tried again on the next one.
    Retry(ImapError),
}

impl MoveBatch {
    pub(super) fn len(&self) -> usize {
        self.processed.len() + self.quarantined.len()
    }
}

impl ImapPoller {
    /// Moves a batch of committed messages out of the mailbox, then saves the position.
    /// Moving in batches keeps the server from rewriting its index once per message; a crash
    /// before the move only means the batch is found again, already ingested, and moved then.
    /// Returns whether this instance still holds the mailbox lease.
    pub(super) async fn flush(
        &self,
        session: &mut ImapSession,
        features: ServerFeatures,
        uidvalidity: i64,
        batch: &mut MoveBatch,
        summary: &mut PollSummary,
    ) -> Result<bool, ImapError> {
        self.move_batch(session, features, batch).await?;
        self.settle_batch(uidvalidity, batch, summary).await
    }

    /// The server's half of [`ImapPoller::flush`]: moves the batch's messages to the processed
    /// and quarantine folders. The drain runs it while the next group is recorded.
    pub(super) async fn move_batch(
        &self,
        session: &mut ImapSession,
        features: ServerFeatures,
        batch: &MoveBatch,
    ) -> Result<(), ImapError> {
        if !batch.processed.is_empty() {
            Self::move_messages(
                session,
                features,
                &uid_set(&batch.processed),
                &self.settings.processed_folder,
            )
            .await?;
        }
        if !batch.quarantined.is_empty() {
            let uids: Vec<u32> = batch.quarantined.iter().map(|(uid, _, _)| *uid).collect();
            Self::move_messages(session, features, &uid_set(&uids), &self.settings.quarantine_folder).await?;
        }
        Ok(())
    }

    /// The database's half of [`ImapPoller::flush`], once the batch is moved: notes the
    /// quarantined messages, saves the position, counts the batch and renews the lease.
    /// Returns whether this instance still holds the mailbox lease.
    pub(super) async fn settle_batch(
        &self,
        uidvalidity: i64,
        batch: &mut MoveBatch,
        summary: &mut PollSummary,
    ) -> Result<bool, ImapError> {
        let key = self.settings.mailbox_key();
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let now = self.engine.now_ms();
        for (uid, source, reason) in &batch.quarantined {
            storage::record_quarantine(&mut conn, source, &key, reason, now).await?;
            self.engine.metrics().message("quarantined");
            warn!(uid, reason = %reason, "message quarantined");
        }
        if let Some(last) = batch.last_uid {
            storage::set_mailbox_position(&mut conn, &key, uidvalidity, i64::from(last)).await?;
        }
        drop(conn);
        let (moved, quarantined) = (batch.processed.len(), batch.quarantined.len());
        summary.uids.extend(
            batch
                .processed
                .iter()
                .copied()
                .chain(batch.quarantined.iter().map(|(uid, _, _)| *uid)),
        );
        summary.quarantined += quarantined;
        self.health.update(|h| {
            h.backlog = h.backlog.saturating_sub(moved + quarantined);
            h.ingested += moved as u64;
            h.quarantined += quarantined as u64;
        });
        *batch = MoveBatch::default();
        // Renewed per batch, so a long drain never outlives the lease.
        self.hold_lease().await
    }

    /// Fetches the next group of messages (up to `GROUP_MESSAGES`, or `GROUP_BYTES` of mail
    /// and at least one message) in two commands: their sizes, then the bodies of those within
    /// the size limit (a message over it is never downloaded). Then counts a try at each in one
    /// commit, and starts each one's preparation on another worker.
    pub(super) async fn fetch_group(
        &self,
        session: &mut ImapSession,
        uids: &mut std::collections::VecDeque<u32>,
    ) -> Result<Vec<InFlight>, ImapError> {
        let next: Vec<u32> = uids.iter().take(GROUP_MESSAGES).copied().collect();
        if next.is_empty() {
            return Ok(Vec::new());
        }
        let sizes = Self::fetch_sizes(session, &next).await?;
        // Each message's size as the server gives it (`None`: expunged since the search) and
        // whether it is within the limit, looked up once.
        let limit = self.settings.max_message_bytes;
        let sized: Vec<(u32, Option<usize>)> = next.iter().map(|uid| (*uid, sizes.get(uid).copied())).collect();
        let readable_size = |size: Option<usize>| size.filter(|&size| size <= limit);
        let (mut taken, mut bytes) = (0, 0);
        for (_, size) in &sized {
            if taken > 0 && bytes >= GROUP_BYTES {
                break;
            }
            bytes += readable_size(*size).unwrap_or(0);
            taken += 1;
        }
        uids.drain(..taken);
        let sized = &sized[..taken];
        let wanted: Vec<u32> = sized
            .iter()
            .filter(|(_, size)| readable_size(*size).is_some())
            .map(|(uid, _)| *uid)
            .collect();
        let mut bodies = Self::fetch_bodies(session, &wanted).await?;
        let fetched: Vec<(u32, Option<Vec<u8>>, usize)> = sized
            .iter()
            .map(|&(uid, size)| (uid, bodies.remove(&uid), size.unwrap_or(0)))
            .collect();
        // A message the service died on before is not read again more than a few times; an
        // error counting the tries leaves the group for the next poll.
        let readable: Vec<&[u8]> = fetched
            .iter()
            .filter_map(|(_, body, _)| body.as_deref())
            .filter(|raw| raw.len() <= limit)
            .collect();
        let mut set_aside = self.engine.guard_preparations(&readable).await?.into_iter();
        let mut group = Vec::with_capacity(fetched.len());
        let too_large = |size: usize| format!("the message is {size} bytes, over the limit of {limit}");
        for (uid, body, size) in fetched {
            group.push(match body {
                // Not downloaded: its size alone puts it aside.
                None if size > limit => InFlight::TooLarge(uid, too_large(size)),
                // Expunged by someone else since the search: nothing to take.
                None => InFlight::Gone(uid),
                Some(raw) if raw.len() > limit => InFlight::TooLarge(uid, too_large(raw.len())),
                Some(raw) => match set_aside.next().flatten() {
                    Some(reason) => InFlight::TooLarge(uid, reason),
                    None => {
                        let engine = self.engine.clone();
                        InFlight::Preparing(
                            uid,
                            tokio::spawn(async move {
                                let prepared = engine.prepare(&raw).await;
                                (raw, prepared)
                            }),
                        )
                    }
                },
            });
        }
        Ok(group)
    }

    /// Records a group of fetched messages (waiting for their preparation first) in one
    /// transaction, and says, in UID order, what to do with each on the server. If the group
    /// fails, its messages are recorded one at a time, each with its own attempt count.
    pub(super) async fn record_group(
        &self,
        items: Vec<InFlight>,
        key: &str,
        uidvalidity: i64,
    ) -> Vec<(u32, Result<Recorded, ImapError>)> {
        // Each message's outcome, in UID order; `None` for those the group transaction records.
        let mut outcomes: Vec<(u32, Option<Result<Recorded, ImapError>>)> = Vec::with_capacity(items.len());
        let started = std::time::Instant::now();
        let (mut ready, mut prepared) = (Vec::new(), Vec::new());
        for item in items {
            let outcome = match item {
                InFlight::Gone(uid) => (uid, Some(Ok(Recorded::Gone))),
                InFlight::TooLarge(uid, reason) => (uid, Some(Ok(Recorded::Quarantine { reason, stored: None }))),
                InFlight::Preparing(uid, preparing) => match preparing.await {
                    Ok((raw, email)) => {
                        ready.push((raw, message_source(key, uidvalidity, uid)));
                        prepared.push(email);
                        (uid, None)
                    }
                    Err(crashed) => {
                        let error = crate::engine::EngineError::PreparationFailed(crashed.to_string());
                        let source = message_source(key, uidvalidity, uid);
                        (uid, Some(self.record_failure(key, &source, error).await))
                    }
                },
            };
            outcomes.push(outcome);
        }
        tracing::trace!(elapsed = ?started.elapsed(), "awaiting preparation");
        let started = std::time::Instant::now();
        let results = self.engine.record_batch(&ready, prepared).await;
        tracing::trace!(elapsed = ?started.elapsed(), "recording");
        let mut recorded = ready.iter().zip(results);
        let mut done = Vec::with_capacity(outcomes.len());
        for (uid, outcome) in outcomes {
            let outcome = match outcome {
                Some(outcome) => outcome,
                None => {
                    let Some(((raw, source), result)) = recorded.next() else {
                        unreachable!("one result per message given to the group")
                    };
                    if result.is_err() {
                        // Prepared to the end, then a storage failure: not a poison message.
                        let _ = self.engine.preparation_finished(raw).await;
                    }
                    self.outcome(uid, key, source, result).await
                }
            };
            done.push((uid, outcome));
        }
        done
    }

    /// What recording one message means for it on the server.
    pub(super) async fn outcome(
        &self,
        uid: u32,
        key: &str,
        source: &str,
        result: Result<IntakeReport, crate::engine::EngineError>,
    ) -> Result<Recorded, ImapError> {
        match result {
            Ok(report) => {
                if let Some(hook) = &self.after_commit {
                    hook(uid).await;
                }
                let malformed = report
                    .cases
                    .iter()
                    .any(|c| c.finding_codes.iter().any(|f| f == "message_malformed"));
                if malformed {
                    let refs: Vec<&str> = report.cases.iter().map(|c| c.reference.as_str()).collect();
                    Ok(Recorded::Quarantine {
                        reason: format!(
                            "the message could not be read as an email; it is kept on case {}",
                            refs.join(", ")
                        ),
                        stored: Some(report.already_ingested),
                    })
                } else {
                    Ok(Recorded::Stored {
                        already_ingested: report.already_ingested,
                    })
                }
            }
            Err(error) => self.record_failure(key, source, error).await,
        }
    }

    /// Counts a failed attempt at a message: quarantine after too many, else retry later.
    pub(super) async fn record_failure(
        &self,
        key: &str,
        source: &str,
        error: crate::engine::EngineError,
    ) -> Result<Recorded, ImapError> {
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let now = self.engine.now_ms();
        let attempts = storage::record_ingest_error(&mut conn, source, key, &format!("{error:#}"), now).await?;
        if attempts >= self.settings.max_attempts {
            return Ok(Recorded::Quarantine {
                reason: format!("ingesting failed {attempts} times: {error:#}"),
                stored: None,
            });
        }
        Ok(Recorded::Retry(ImapError::Intake(error)))
    }

    /// Takes every new message in the mailbox once. Stops early (between messages) when
    /// `stop` is set.
    #[instrument(skip_all, fields(mailbox = %self.settings.mailbox_key()))]
    pub async fn poll_once(
        &self,
        session: &mut ImapSession,
        stop: &watch::Receiver<bool>,
    ) -> Result<PollSummary, ImapError> {
        let key = self.settings.mailbox_key();
        let mut summary = PollSummary::default();
        if !self.hold_lease().await? {
            self.health.update(|h| h.state = "waiting for the mailbox lease".into());
            return Ok(summary);
        }
        summary.lease_held = true;
        let features = Self::features(session).await?;
        Self::ensure_folder(session, &self.settings.processed_folder).await?;
        Self::ensure_folder(session, &self.settings.quarantine_folder).await?;
        let mailbox = within("selecting the mailbox", async {
            session
                .select(&self.settings.mailbox)
                .await
                .imap("selecting the mailbox")
        })
        .await?;
        let uidvalidity = i64::from(mailbox.uid_validity.ok_or_else(|| ImapError::NoUidValidity {
            mailbox: self.settings.mailbox.clone(),
        })?);

        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        let (stored_validity, stored_last) = storage::mailbox_position(&mut conn, &key).await?;
        let last_uid = match stored_validity {
            Some(v) if v == uidvalidity => stored_last.unwrap_or(0),
            Some(v) => {
                warn!(
                    old = v,
                    new = uidvalidity,
                    "UIDVALIDITY changed: rescanning the mailbox; deduplication keeps it from re-importing"
                );
                0
            }
            None => 0,
        };
        storage::set_mailbox_position(&mut conn, &key, uidvalidity, last_uid).await?;
        drop(conn);

        // Dovecot answers `UID n:*` with the highest UID even when it is below n: filter.
        let mut uids: Vec<u32> = within("searching for new mail", async {
            session
                .uid_search(format!("UID {}:*", last_uid + 1))
                .await
                .imap("searching for new mail")
        })
        .await?
        .into_iter()
        .filter(|uid| i64::from(*uid) > last_uid)
        .collect();
        uids.sort_unstable();
        summary.backlog = uids.len();
        self.health.update(|h| {
            h.state = "polling".into();
            h.backlog = uids.len();
        });

        let mut batch = MoveBatch::default();
        // Where a drain spends its time, logged at debug level for tuning.
        let (mut waiting, mut moving_time) = (Duration::ZERO, Duration::ZERO);
        // A pipeline three groups deep: while one group of messages is recorded (in one
        // transaction), the next is prepared (parsed, its PDFs read) on other workers, and the
        // one after is fetched. Messages are recorded, moved and counted strictly in UID
        // order, so the saved position never passes a message that is not stored yet.
        let mut in_flight: std::collections::VecDeque<Vec<InFlight>> = Default::default();
        let mut uids: std::collections::VecDeque<u32> = uids.into();
        loop {
            if *stop.borrow() {
                // What is fetched but not recorded is left for next time: it is not moved,
                // and the saved position has not passed it.
                break;
            }
            if uids.is_empty() && in_flight.is_empty() {
                break;
            }
            // A full batch is moved on the server while the next group is recorded; its
            // messages are committed already, and the position is saved after the move.
            let mut moving_batch = (batch.len() >= MOVE_BATCH).then(|| std::mem::take(&mut batch));
            let started = std::time::Instant::now();
            // The oldest group is recorded once the one after it has had a whole round to be
            // prepared in, or when there is nothing left to fetch.
            let oldest = if in_flight.len() >= PREPARING_GROUPS || uids.is_empty() {
                in_flight.pop_front().unwrap_or_default()
            } else {
                Vec::new()
            };
            let ((fetched, moved), recorded) = tokio::join!(
                async {
                    let fetched = self.fetch_group(session, &mut uids).await;
                    let moved = match &moving_batch {
                        Some(moving) => self.move_batch(session, features, moving).await,
                        None => Ok(()),
                    };
                    (fetched, moved)
                },
                self.record_group(oldest, &key, uidvalidity)
            );
            waiting += started.elapsed();
            if let Some(moving) = &mut moving_batch {
                moved?;
                let started = std::time::Instant::now();
                let still_held = self.settle_batch(uidvalidity, moving, &mut summary).await?;
                moving_time += started.elapsed();
                if !still_held {
                    // What this round recorded stays in the mailbox, found again (already
                    // ingested) by the instance that holds the lease now.
                    warn!("lost the mailbox lease; another instance has it");
                    return Ok(summary);
                }
            }
            for (uid, recorded) in recorded {
                match recorded? {
                    Recorded::Gone => {}
                    Recorded::Stored { already_ingested } => {
                        summary.count_stored(already_ingested);
                        batch.processed.push(uid);
                    }
                    Recorded::Quarantine { reason, stored } => {
                        if let Some(already_ingested) = stored {
                            summary.count_stored(already_ingested);
                        }
                        batch
                            .quarantined
                            .push((uid, message_source(&key, uidvalidity, uid), reason));
                    }
                    Recorded::Retry(error) => {
                        // Likely passing (the database is down): move what is done, leave this
                        // one, and retry from here on the next poll.
                        self.flush(session, features, uidvalidity, &mut batch, &mut summary)
                            .await?;
                        return Err(error);
                    }
                }
                batch.last_uid = Some(uid);
            }
            let fetched = fetched?;
            if !fetched.is_empty() {
                in_flight.push_back(fetched);
            }
        }
        let started = std::time::Instant::now();
        self.flush(session, features, uidvalidity, &mut batch, &mut summary)
            .await?;
        moving_time += started.elapsed();
        tracing::debug!(?waiting, moving = ?moving_time, "drain timings");
        let now = self.engine.now_ms();
        let backlog = summary.backlog - summary.uids.len();
        let mut conn = self.engine.db().pool.acquire().await.context("connecting")?;
        storage::record_poll(&mut conn, &key, now, Some(backlog as i64), None).await?;
        self.health.update(|h| {
            h.last_poll_at = Some(now);
            h.last_success_at = Some(now);
            h.last_error = None;
        });
        info!(
            ingested = summary.ingested,
            already = summary.already_ingested,
            quarantined = summary.quarantined,
            "poll done"
        );
        Ok(summary)
    }

    /// Connects, polls once and logs out: `serve --once`, and tests.
    pub async fn drain_once(&self) -> Result<PollSummary, ImapError> {
        let (_keep, stop) = watch::channel(false);
        let mut session = connect(&self.settings).await?;
        let summary = self.poll_once(&mut session, &stop).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), session.logout()).await;
        summary
    }
}
