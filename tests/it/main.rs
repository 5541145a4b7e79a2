//! The integration tests: one binary (it links once, and its tests share one process), with a
//! module per area. `common` starts what they need: a fresh database of each backend, Dovecot,
//! Postfix, headless Chromium. Run one area with `cargo test --test it web::`. (`tests/pdf_hostile.rs` stays a binary
//! of its own: the peak memory it measures must be its own.)

mod common;

mod accessibility;
mod accounts;
mod api;
mod audit;
mod browser;
mod cli;
mod credentials;
mod engine;
mod evidence;
mod faults;
mod hostile_mail;
mod imap;
mod mail_out;
mod new_user;
mod oidc;
mod ops;
mod pdf_extraction;
mod permissions_by_email;
mod query_plans;
mod registry;
mod replies;
mod reports;
mod sender_check;
mod sign_in;
mod signatories;
mod signed_forms;
mod support;
mod web;
