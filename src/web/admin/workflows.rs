//! The workflows (admins), each drawn as a state diagram (SVG made here from the workflow
//! file) with its rules, timers and templates.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum_csrf::CsrfToken;

use crate::web::auth::{CurrentUser, render};
use crate::web::view::escape;
use crate::web::{Access, AppState, Route, WebError};
use crate::workflow::WorkflowDef;

pub(in crate::web) fn routes() -> Vec<Route> {
    vec![Route::get("/admin/workflows", Access::Admin, workflows)]
}

/// A state diagram: states in columns by their distance from the initial state, transitions
/// as arrows labelled with their names.
pub fn state_diagram(workflow: &WorkflowDef) -> String {
    use std::collections::BTreeMap;
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    let initial = workflow.initial_state().name.as_str();
    depth.insert(initial, 0);
    let mut frontier = vec![initial];
    while let Some(state) = frontier.pop() {
        let d = depth[state];
        for t in workflow.transitions_from(state) {
            if !depth.contains_key(t.to.as_str()) {
                depth.insert(t.to.as_str(), d + 1);
                frontier.insert(0, t.to.as_str());
            }
        }
    }
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for state in &workflow.states {
        columns
            .entry(*depth.get(state.name.as_str()).unwrap_or(&9))
            .or_default()
            .push(&state.name);
    }
    let (box_w, box_h, col_gap, row_gap) = (170.0, 40.0, 90.0, 26.0);
    let mut position: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (col, (_, states)) in columns.iter().enumerate() {
        for (row, state) in states.iter().enumerate() {
            position.insert(
                state,
                (
                    20.0 + col as f64 * (box_w + col_gap),
                    20.0 + row as f64 * (box_h + row_gap),
                ),
            );
        }
    }
    let width = 40.0 + columns.len() as f64 * (box_w + col_gap);
    let height = 40.0 + columns.values().map(Vec::len).max().unwrap_or(1) as f64 * (box_h + row_gap);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"State diagram of {}\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" font-family=\"Arial\" font-size=\"12\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#4c6272\"/></marker></defs>",
        escape(&workflow.title)
    );
    for t in &workflow.transitions {
        for from in &t.from {
            let (Some(&(x1, y1)), Some(&(x2, y2))) = (position.get(from.as_str()), position.get(t.to.as_str())) else {
                continue;
            };
            let (sx, sy, ex, ey) = (x1 + box_w, y1 + box_h / 2.0, x2, y2 + box_h / 2.0);
            let (sx, ex) = if x2 <= x1 { (x1, x2 + box_w) } else { (sx, ex) };
            svg.push_str(&format!(
                "<path d=\"M {sx} {sy} C {} {sy}, {} {ey}, {ex} {ey}\" fill=\"none\" stroke=\"#768692\" stroke-width=\"1.2\" marker-end=\"url(#arrow)\"><title>{}: {} → {} ({})</title></path>",
                (sx + ex) / 2.0,
                (sx + ex) / 2.0,
                escape(&t.name),
                escape(from),
                escape(&t.to),
                t.by.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for state in &workflow.states {
        let Some(&(x, y)) = position.get(state.name.as_str()) else {
            continue;
        };
        let fill = if state.terminal {
            "#f0f4f5"
        } else if state.initial {
            "#e8f1fa"
        } else {
            "#ffffff"
        };
        svg.push_str(&format!(
            "<g><rect x=\"{x}\" y=\"{y}\" width=\"{box_w}\" height=\"{box_h}\" rx=\"6\" fill=\"{fill}\" stroke=\"#005eb8\" stroke-width=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#212b32\">{}</text></g>",
            if state.terminal { 1 } else { 2 },
            x + box_w / 2.0,
            y + box_h / 2.0 + 4.0,
            escape(&state.label)
        ));
    }
    svg.push_str("</svg>");
    svg
}

pub async fn workflows(
    State(state): State<AppState>,
    user: CurrentUser,
    token: CsrfToken,
) -> Result<Response, WebError> {
    let views: Vec<serde_json::Value> = state
        .engine
        .workflows()
        .iter()
        .map(|w| {
            serde_json::json!({
                "name": w.name, "title": w.title, "form_id": w.form_id(), "diagram": state_diagram(w),
                // A workflow of plain emails: how it knows its mail, what it checks, and the
                // problems it sorts mail into with the reply each gets.
                "email": w.email_recognition().map(|r| serde_json::json!({
                    "from": r.from.iter().chain(&r.from_domains).cloned().collect::<Vec<_>>(),
                    "subject": r.subject.as_ref().map(|p| p.as_str()),
                    "phrases": r.any_phrase,
                    "fields": r.fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
                })),
                "primary_user_field": w.email_checks.primary_user_field,
                "classes": w.classify.as_ref().map(|c| c.classes.iter().map(|class| serde_json::json!({
                    "name": class.name, "label": class.label, "template": class.template,
                    "refer_to": class.refer_to, "signs": class.phrases.len() + class.patterns.len(),
                })).collect::<Vec<_>>()),
                "roles": w.signatories.roles.iter().map(|r| &r.role).collect::<Vec<_>>(),
                "nhs_fields": w.nhs_email.fields, "sender_nhs": w.nhs_email.sender, "sender_is_signatory": w.nhs_email.sender_must_be_signatory,
                "max_age_days": w.signatories.max_age_days, "sla": w.sla.target_working_days, "four_eyes": w.four_eyes,
                "credential": w.credential.as_ref().map(|c| serde_json::json!({
                    "kind": match c.kind { crate::credentials::CredentialKind::Password => "password", crate::credentials::CredentialKind::Passcode => "passcode" },
                    "length": if c.min_length == c.max_length { c.min_length.to_string() } else { format!("{} to {}", c.min_length, c.max_length) },
                    "lifetime_days": c.lifetime_days, "issue_on": c.issue_on, "send_to": c.send_to,
                    "username_field": c.username_field, "username_to": c.username_to, "link_valid_hours": c.link_valid_hours,
                })),
                "transitions": w.transitions.iter().map(|t| serde_json::json!({
                    "name": t.name, "from": t.from.join(", "), "to": t.to, "by": t.by.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "), "template": if t.template_by_class { Some("the reply of the case's problem") } else { t.template.as_deref() },
                })).collect::<Vec<_>>(),
                "timers": w.timers.iter().map(|t| serde_json::json!({
                    "name": t.name, "state": t.state, "days": t.after_working_days, "action": format!("{:?}", t.action), "template": t.template, "transition": t.transition,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut context = tera::Context::new();
    context.insert("user", &user.0);
    context.insert("csrf", &token.authenticity_token().map_err(WebError::internal)?);
    context.insert("workflows", &views);
    Ok((token, render(&state, "workflows.html.tera", &context)?).into_response())
}
