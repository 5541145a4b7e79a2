//! What the drain asks of a logged-in session: the server's features, folders, one message's
//! bytes, and moving messages (MOVE, or COPY + `\Deleted` + UID EXPUNGE).

use super::*;

/// A compact IMAP UID set for sorted UIDs: `1:3,7,9:10`.
pub(super) fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// The server's relevant capabilities, asked again after login (Dovecot adds MOVE then).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServerFeatures {
    pub(super) r#move: bool,
    pub(super) uidplus: bool,
    pub(super) idle: bool,
}

impl ServerFeatures {
    pub(super) fn from(caps: &Capabilities) -> Self {
        ServerFeatures {
            r#move: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
            idle: caps.has_str("IDLE"),
        }
    }
}

impl ImapPoller {
    pub(super) async fn features(session: &mut ImapSession) -> Result<ServerFeatures, ImapError> {
        let caps = within("asking for capabilities", async {
            session.capabilities().await.imap("asking for capabilities")
        })
        .await?;
        Ok(ServerFeatures::from(&caps))
    }

    pub(super) async fn ensure_folder(session: &mut ImapSession, folder: &str) -> Result<(), ImapError> {
        let existing: Vec<_> = within("listing folders", async {
            session
                .list(None, Some(folder))
                .await
                .imap("listing folders")?
                .try_collect::<Vec<_>>()
                .await
                .imap("listing folders")
        })
        .await?;
        if existing.is_empty() {
            within("creating a folder", async {
                session.create(folder).await.imap("creating a folder")
            })
            .await?;
        }
        Ok(())
    }

    /// The sizes the server gives for these messages, in one command; a message expunged
    /// since the search is missing from the answer.
    pub(super) async fn fetch_sizes(
        session: &mut ImapSession,
        uids: &[u32],
    ) -> Result<std::collections::BTreeMap<u32, usize>, ImapError> {
        within("reading message sizes", async {
            let fetches: Vec<_> = session
                .uid_fetch(uid_set(uids), "(UID RFC822.SIZE)")
                .await
                .imap("reading message sizes")?
                .try_collect()
                .await
                .imap("reading message sizes")?;
            Ok(fetches
                .iter()
                .filter_map(|f| Some((f.uid?, f.size? as usize)))
                .filter(|(uid, _)| uids.contains(uid))
                .collect())
        })
        .await
    }

    /// The raw bytes of these messages, in one command; a message expunged since the search
    /// is missing from the answer.
    pub(super) async fn fetch_bodies(
        session: &mut ImapSession,
        uids: &[u32],
    ) -> Result<std::collections::BTreeMap<u32, Vec<u8>>, ImapError> {
        if uids.is_empty() {
            return Ok(Default::default());
        }
        within("fetching messages", async {
            let mut bodies = std::collections::BTreeMap::new();
            let mut fetches = session
                .uid_fetch(uid_set(uids), "(UID BODY.PEEK[])")
                .await
                .imap("fetching messages")?;
            while let Some(fetch) = fetches.try_next().await.imap("fetching messages")? {
                if let (Some(uid), Some(body)) = (fetch.uid, fetch.body())
                    && uids.contains(&uid)
                {
                    bodies.insert(uid, body.to_vec());
                }
            }
            Ok(bodies)
        })
        .await
    }

    pub(super) async fn move_messages(
        session: &mut ImapSession,
        features: ServerFeatures,
        set: &str,
        folder: &str,
    ) -> Result<(), ImapError> {
        within("moving a message", async {
            if features.r#move {
                session.uid_mv(&set, folder).await.imap("moving a message")?;
            } else {
                session.uid_copy(&set, folder).await.imap("copying a message")?;
                let _: Vec<_> = session
                    .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
                    .await
                    .imap("flagging a message deleted")?
                    .try_collect()
                    .await
                    .imap("flagging a message deleted")?;
                if features.uidplus {
                    let _: Vec<_> = session
                        .uid_expunge(&set)
                        .await
                        .imap("expunging a message")?
                        .try_collect()
                        .await
                        .imap("expunging a message")?;
                } else {
                    let _: Vec<_> = session
                        .expunge()
                        .await
                        .imap("expunging")?
                        .try_collect()
                        .await
                        .imap("expunging")?;
                }
            }
            Ok(())
        })
        .await
    }
}
