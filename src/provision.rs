//! Provisioning: today a caseworker creates the Open Exeter account by hand and records what
//! the workflow's provisioning transition asks for (its `records`, such as the user ID). The
//! trait is the seam where an automated provisioner can be added later.

use crate::engine::{Engine, EngineError};
use crate::storage::CaseRecord;
use crate::workflow::wellknown::PROVISIONED;
use crate::workflow::{Actor, TransitionRequest};

/// Something that can provision the account a case asks for.
#[allow(async_fn_in_trait)]
pub trait Provisioner {
    /// Provisions (or records the provisioning of) the case's account, moving it to
    /// `provisioned`.
    async fn provision(&self, engine: &Engine, reference: &str, actor: &Actor) -> Result<CaseRecord, EngineError>;
}

/// The caseworker did it in Open Exeter and tells us the values the workflow records, by the
/// names its workflow file gives them (e.g. `open_exeter_user_id`).
pub struct RecordedByCaseworker {
    pub recorded: Vec<(String, String)>,
    pub note: Option<String>,
}

impl Provisioner for RecordedByCaseworker {
    async fn provision(&self, engine: &Engine, reference: &str, actor: &Actor) -> Result<CaseRecord, EngineError> {
        let request = TransitionRequest {
            to: PROVISIONED.into(),
            reason: self.note.clone(),
            recorded: self.recorded.clone(),
            ..TransitionRequest::default()
        };
        engine.transition(reference, &request, actor).await
    }
}
