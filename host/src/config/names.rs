//! Validated names. Parsing goes through these so that a bad name is reported by serde
//! at its exact position in topics.toml.

use std::fmt;

use serde::Deserialize;

/// A Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicName(String);

impl TryFrom<String> for TopicName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > 249 || !valid_chars || name == "." || name == ".." {
            return Err(format!(
                "invalid topic name {name:?}: use 1 to 249 characters of letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(TopicName(name))
    }
}

impl TopicName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A component name: lowercase letters, digits and '-', starting with a letter, at most
/// 63 characters. It names the storage namespace, so it must stay stable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ComponentName(String);

impl TryFrom<String> for ComponentName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let mut chars = name.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_with_letter || !rest_ok || name.len() > 63 {
            return Err(format!(
                "invalid component name {name:?}: use a lowercase letter followed by up to 62 lowercase letters, digits or '-'"
            ));
        }
        Ok(ComponentName(name))
    }
}

impl ComponentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(TopicName::try_from("orders.requests".to_string()).is_ok());
        assert!(TopicName::try_from("a_b-C.9".to_string()).is_ok());
        for bad in ["", ".", "..", "orders requests", "orders/x", &"x".repeat(250)] {
            let err = TopicName::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains("invalid topic name"), "{err}");
        }
    }

    #[test]
    fn component_names_are_lowercase_identifiers() {
        assert!(ComponentName::try_from("order".to_string()).is_ok());
        assert!(ComponentName::try_from("notif-sender2".to_string()).is_ok());
        for bad in ["", "Order", "1order", "or_der", "-x"] {
            assert!(ComponentName::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
