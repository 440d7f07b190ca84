//! Read-only queries (the `query` export): decode the arguments, encode the answer.
//! Query names and their JSON shapes are listed in docs/events.md ("Queries").

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::QueryError;

/// Decodes JSON `args` as `T`; anything else is [`QueryError::Invalid`] naming the
/// query and the problem.
pub fn args<T: DeserializeOwned>(name: &str, args: &[u8]) -> Result<T, QueryError> {
    serde_json::from_slice(args)
        .map_err(|err| QueryError::Invalid(format!("arguments of query {name:?} are not valid: {err}")))
}

/// Encodes an answer as JSON.
pub fn answer<T: Serialize>(value: &T) -> Result<Vec<u8>, QueryError> {
    serde_json::to_vec(value).map_err(|err| QueryError::Failed(format!("cannot encode the answer: {err}")))
}

/// Routes a query by name to a function taking its decoded arguments and returning its
/// answer, the query counterpart of [`crate::Router`]: each query is declared once, its
/// arguments decoded (or refused as `invalid`) and its answer encoded as JSON, and an
/// unknown name is answered `unknown` with the list of known ones.
///
/// ```ignore
/// QueryRouter::new("billing", &name, &args)
///     .on("balance", |by: ByUser| balance(&by.username))
///     .finish()
/// ```
pub struct QueryRouter<'a> {
    component: &'static str,
    name: &'a str,
    args: &'a [u8],
    known: Vec<&'static str>,
    answer: Option<Result<Vec<u8>, QueryError>>,
}

impl<'a> QueryRouter<'a> {
    pub fn new(component: &'static str, name: &'a str, args: &'a [u8]) -> QueryRouter<'a> {
        QueryRouter {
            component,
            name,
            args,
            known: Vec::new(),
            answer: None,
        }
    }

    /// Query `query` is answered by `handler`, given its arguments decoded as `A`.
    pub fn on<A: DeserializeOwned, R: Serialize>(
        mut self,
        query: &'static str,
        handler: impl FnOnce(A) -> Result<R, QueryError>,
    ) -> QueryRouter<'a> {
        self.known.push(query);
        if self.answer.is_none() && self.name == query {
            self.answer = Some(args::<A>(query, self.args).and_then(handler).and_then(|r| answer(&r)));
        }
        self
    }

    /// The routed query's answer, or `unknown` naming the queries there are.
    pub fn finish(self) -> Result<Vec<u8>, QueryError> {
        self.answer
            .unwrap_or_else(|| Err(unknown(self.component, self.name, &self.known)))
    }
}

/// The answer for a query name the component does not know.
pub fn unknown(component: &str, name: &str, known: &[&str]) -> QueryError {
    QueryError::Unknown(format!(
        "{component} has no query {name:?}; it answers {}",
        known.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct ByUser {
        username: String,
    }

    #[test]
    fn bad_arguments_are_invalid_and_say_why() {
        assert_eq!(
            args::<ByUser>("balance", br#"{"username":"bob"}"#).unwrap(),
            ByUser { username: "bob".into() }
        );
        let QueryError::Invalid(why) = args::<ByUser>("balance", b"{}").unwrap_err() else {
            panic!("expected invalid");
        };
        assert!(why.contains("balance") && why.contains("username"), "{why}");
        assert!(matches!(
            args::<ByUser>("balance", b"\xff"),
            Err(QueryError::Invalid(_))
        ));
    }

    #[test]
    fn the_router_decodes_arguments_and_encodes_answers() {
        let route = |name: &str, args: &[u8]| {
            QueryRouter::new("billing", name, args)
                .on("balance", |by: ByUser| {
                    Ok(serde_json::json!({ "username": by.username }))
                })
                .on("other", |_: serde_json::Value| Ok(1))
                .finish()
        };
        assert_eq!(
            route("balance", br#"{"username":"bob"}"#).unwrap(),
            br#"{"username":"bob"}"#
        );
        assert!(matches!(route("balance", b"{}"), Err(QueryError::Invalid(_))));
        let Err(QueryError::Unknown(why)) = route("nope", b"{}") else {
            panic!("expected unknown");
        };
        assert!(why.contains("\"balance\", \"other\""), "{why}");
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let QueryError::Unknown(why) = unknown("billing", "x", &["balance"]) else {
            panic!("expected unknown");
        };
        assert_eq!(why, "billing has no query \"x\"; it answers \"balance\"");
    }
}
