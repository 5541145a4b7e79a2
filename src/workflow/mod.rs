//! Workflows: their definitions (data, from `workflows/*.toml`), the few states the engine
//! relies on by name, and the pure state machine.

pub mod definition;
pub mod email;
pub mod evaluate;
pub mod machine;
pub mod wellknown;

pub use definition::{
    ActorRole, CredentialDef, DefinitionError, FieldDef, FieldKind, FourEyesPart, OpenedBy, OrganisationKind,
    TimerAction, TimerDef, TransitionDef, WorkflowDef, WorkflowSet,
};
pub use machine::{Actor, CaseHistory, TransitionError, TransitionPlan, TransitionRequest, plan_transition};

/// The workflows the service ships (`workflows/*.toml`), for unit tests.
#[cfg(test)]
pub(crate) fn shipped() -> WorkflowSet {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    WorkflowSet::load(&root.join("workflows"), &root.join("templates")).expect("shipped workflows load")
}
