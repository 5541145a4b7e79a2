//! The admin pages: staff accounts, organisations, the workflows as diagrams, and previews of
//! every email template.

mod organisations;
mod signatories;
mod templates;
mod users;
mod workflows;

use super::Route;

pub(super) fn routes() -> Vec<Route> {
    [
        users::routes(),
        organisations::routes(),
        signatories::routes(),
        workflows::routes(),
        templates::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
