//! The API's door to the one command path (`syncjobs_actors::command`), and readable ids:
//! how a collection's id is made from its name when none is given.
//!
//! The aggregates themselves (collections, source connections) live in `syncjobs_domain`.

use super::auth::ApiContext;
use super::error::ApiError;
use super::AppState;
use syncjobs_actors::command;
use syncjobs_domain::{Aggregate, RecordedEvent};

/// Runs `cmd` on `stream` as the request's principal; what it appended (nothing when there
/// was nothing to do), or the API's answer to why not.
pub async fn execute<A: Aggregate>(
    state: &AppState,
    ctx: &ApiContext,
    stream: &str,
    cmd: &A::Command,
) -> Result<Vec<RecordedEvent>, ApiError>
where
    ApiError: From<A::Error>,
{
    let meta = ctx.metadata();
    let executed =
        command::execute::<A>(&*state.store, &*state.clock, stream, None, cmd, &meta).await?;
    Ok(executed.events)
}

/// Airweave's readable id from a name: lower-case, only `[a-z0-9]` and single hyphens,
/// then a random 6-character suffix (`Finance Data` -> `finance-data-ab12x9`).
pub fn readable_id_from_name(name: &str) -> String {
    use rand::distr::{Distribution, Uniform};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut slug = String::with_capacity(name.len() + 7);
    let mut pending_hyphen = false;
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_hyphen && !slug.is_empty() {
                slug.push('-');
            }
            pending_hyphen = false;
            slug.push(c);
        } else if c.is_whitespace() || c == '-' {
            pending_hyphen = true;
        }
        // anything else is dropped, as Airweave does
    }
    if !slug.is_empty() {
        slug.push('-');
    }
    let mut rng = rand::rng();
    if let Ok(pick) = Uniform::new(0, ALPHABET.len()) {
        for _ in 0..6 {
            slug.push(ALPHABET[pick.sample(&mut rng)] as char);
        }
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_ids_from_names_follow_airweave() {
        let id = readable_id_from_name("  Finance  Data (Q1)! ");
        assert!(id.starts_with("finance-data-q1-"), "{id}");
        assert_eq!(id.len(), "finance-data-q1-".len() + 6);
        assert!(super::super::input::valid_readable_id(&id));
        let only_suffix = readable_id_from_name("!!!!");
        assert_eq!(only_suffix.len(), 6);
        assert!(super::super::input::valid_readable_id(&only_suffix));
        assert_ne!(readable_id_from_name("same"), readable_id_from_name("same"));
    }
}
