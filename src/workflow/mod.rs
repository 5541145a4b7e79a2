//! Workflows: their definitions (data, from `workflows/*.toml`) and the pure state machine.

pub mod definition;
pub mod machine;

pub use definition::{
    ActorRole, DefinitionError, FieldDef, FieldKind, OrganisationKind, TimerAction, TimerDef, TransitionDef,
    WorkflowDef, WorkflowSet,
};
pub use machine::{Actor, CaseHistory, TransitionError, TransitionPlan, TransitionRequest, plan_transition};
