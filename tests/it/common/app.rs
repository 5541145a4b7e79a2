//! `TestApp`: the service as a test sees it. It is built by the composition root (as `serve`
//! builds it) on a database of its own, and answers in the case's terms: what a reference's
//! case, events, timers and mail are now. It dereferences to the engine, so a test drives the
//! service through the engine's own API and reads back through the storage API, never SQL.

use std::ops::Deref;

use countersign::domain::EventKind;
use countersign::engine::{Engine, IntakeReport};
use countersign::storage::{self, CaseEvent, CaseRecord, Inventory, OutboxRecord, TimerRecord};

use super::fixture;

#[derive(Clone)]
pub struct TestApp {
    engine: Engine,
}

impl Deref for TestApp {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl TestApp {
    pub fn new(engine: Engine) -> TestApp {
        TestApp { engine }
    }

    /// The engine itself, for a part of the service built around one (a poller, the web app).
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// An email arrives (from the test's mail source).
    pub async fn receive(&self, email: &[u8]) -> IntakeReport {
        self.engine.intake(email, "test").await.expect("the email is taken in")
    }

    /// A fixture email arrives; the reference of the first case it made.
    pub async fn receive_fixture(&self, name: &str) -> String {
        self.receive(&fixture(name)).await.cases[0].reference.clone()
    }

    /// The case with this reference, as stored now.
    pub async fn case(&self, reference: &str) -> CaseRecord {
        let mut conn = self.engine.db().pool.acquire().await.expect("a connection");
        storage::case_by_reference(&mut conn, reference)
            .await
            .expect("reading a case")
            .unwrap_or_else(|| panic!("no case {reference}"))
    }

    /// The case's event log, oldest first.
    pub async fn events(&self, reference: &str) -> Vec<CaseEvent> {
        let id = self.case(reference).await.id;
        let mut conn = self.engine.db().pool.acquire().await.expect("a connection");
        storage::events_for_case(&mut conn, id).await.expect("reading events")
    }

    /// What kinds of thing happened to the case, oldest first.
    pub async fn event_kinds(&self, reference: &str) -> Vec<EventKind> {
        self.events(reference).await.into_iter().map(|e| e.kind).collect()
    }

    /// The case's timers, armed, fired or cancelled.
    pub async fn timers(&self, reference: &str) -> Vec<TimerRecord> {
        let id = self.case(reference).await.id;
        let mut conn = self.engine.db().pool.acquire().await.expect("a connection");
        storage::timers_for_case(&mut conn, id).await.expect("reading timers")
    }

    /// The mail queued about the case, sent or not.
    pub async fn outbox(&self, reference: &str) -> Vec<OutboxRecord> {
        let id = self.case(reference).await.id;
        let mut conn = self.engine.db().pool.acquire().await.expect("a connection");
        storage::outbox_for_case(&mut conn, id).await.expect("reading mail")
    }

    /// How many of each kind of record the service holds.
    pub async fn stored(&self) -> Inventory {
        super::stored(&self.engine).await
    }

    /// The signatory register learns of someone (as an import would add them).
    pub async fn register_signatory(&self, ods: &str, role: &str, name: &str, email: &str) {
        let mut conn = self.engine.db().pool.acquire().await.expect("a connection");
        let entry = storage::NewSignatory {
            signatory: countersign::signatories::KnownSignatory {
                ods_code: ods.into(),
                role: role.into(),
                name: name.into(),
                email: Some(email.into()),
                source: "import".into(),
            },
            verified_by: None,
            note: None,
            case_reference: None,
        };
        storage::add_signatories(&mut conn, &[entry], self.engine.now_ms())
            .await
            .expect("adding a signatory");
    }
}
