//! The admin pages: staff accounts, organisations, and the workflows as diagrams.

mod organisations;
mod users;
mod workflows;

use super::Route;

pub(super) fn routes() -> Vec<Route> {
    [users::routes(), organisations::routes(), workflows::routes()]
        .into_iter()
        .flatten()
        .collect()
}
