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
    fn unknown_names_list_the_known_ones() {
        let QueryError::Unknown(why) = unknown("billing", "x", &["balance"]) else {
            panic!("expected unknown");
        };
        assert_eq!(why, "billing has no query \"x\"; it answers \"balance\"");
    }
}
