//! E-mail deliveries through an SMTP relay with lettre: a well-formed MIME message whose
//! `Message-ID` is `<delivery-id@switchyard>` on every attempt, credentials from the
//! host's environment.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::Attempt;

/// A checked e-mail, as stored: the relay resolved from the component's reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Email {
    /// The relay as written in `reach.smtp`, for messages.
    pub relay: String,
    /// lettre's transport URL (no credentials).
    pub relay_url: String,
    /// `HOST_PORT` of the relay, naming its credential variables.
    pub relay_env_key: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: String,
}

/// The Message-ID of delivery `id`: the same on every attempt, so a receiver can drop
/// a repeat.
pub fn message_id(id: &str) -> String {
    format!("<{id}@switchyard>")
}

fn mailbox(what: &str, text: &str) -> Result<Mailbox, String> {
    text.parse::<Mailbox>().map_err(|e| {
        format!("{what} {text:?} is not an e-mail address ({e}); write addr@example.org or Name <addr@example.org>")
    })
}

/// The MIME message of delivery `id` (also the call's check that it can be built).
pub fn build(id: &str, email: &Email) -> Result<Message, String> {
    if email.recipients.is_empty() {
        return Err("an e-mail needs at least one recipient".into());
    }
    let mut builder = Message::builder()
        .from(mailbox("sender", &email.sender)?)
        .subject(email.subject.as_str())
        .message_id(Some(message_id(id)))
        .header(ContentType::TEXT_PLAIN);
    for recipient in &email.recipients {
        builder = builder.to(mailbox("recipient", recipient)?);
    }
    if let Some(reply_to) = &email.reply_to {
        builder = builder.reply_to(mailbox("reply-to", reply_to)?);
    }
    builder
        .body(email.text.clone())
        .map_err(|e| format!("cannot build the e-mail: {e}"))
}

/// `SWITCHYARD_SMTP_<HOST>_<PORT>_USER` and `_PASSWORD`: the relay's credentials.
pub fn credential_vars(env_key: &str) -> (String, String) {
    (
        format!("SWITCHYARD_SMTP_{env_key}_USER"),
        format!("SWITCHYARD_SMTP_{env_key}_PASSWORD"),
    )
}

/// One attempt.
pub async fn send(id: &str, email: &Email, timeout: Duration) -> Attempt {
    let message = match build(id, email) {
        Ok(message) => message,
        Err(reason) => return Attempt::Refused { status: None, reason },
    };
    let builder = match AsyncSmtpTransport::<Tokio1Executor>::from_url(&email.relay_url) {
        Ok(builder) => builder.timeout(Some(timeout)),
        Err(err) => {
            return Attempt::Refused {
                status: None,
                reason: format!("relay {}: {err}", email.relay),
            };
        }
    };
    let (user_var, password_var) = credential_vars(&email.relay_env_key);
    let builder = match (std::env::var(user_var), std::env::var(password_var)) {
        (Ok(user), Ok(password)) => builder.credentials(Credentials::new(user, password)),
        _ => builder,
    };
    let transport = builder.build();
    match transport.send(message).await {
        Ok(response) => Attempt::Delivered {
            status: response.code().into(),
        },
        Err(err) => {
            let status = err.status().map(u16::from);
            let reason = format!("relay {}: {err}", email.relay);
            // 5xx: the relay refused for good (a rejected address); anything else (a
            // relay that is down, 4xx, a timeout) may pass later.
            if err.is_permanent() {
                Attempt::Refused { status, reason }
            } else {
                Attempt::Failed { status, reason }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            relay: "127.0.0.1:2525".into(),
            relay_url: "smtp://127.0.0.1:2525".into(),
            relay_env_key: "127_0_0_1_2525".into(),
            sender: "Shop <shop@example.org>".into(),
            recipients: vec!["alice@example.org".into()],
            reply_to: Some("help@example.org".into()),
            subject: "Order #7 is paid\r\nBcc: everyone@example.org".into(),
            text: "Hello Alice".into(),
        }
    }

    #[test]
    fn the_message_is_well_formed_and_names_the_delivery() {
        let text = String::from_utf8(build("d-1", &email()).unwrap().formatted()).unwrap();
        assert!(text.contains("Message-ID: <d-1@switchyard>\r\n"), "{text}");
        assert!(text.contains("From: Shop <shop@example.org>\r\n"), "{text}");
        assert!(text.contains("To: alice@example.org\r\n"), "{text}");
        assert!(text.contains("Reply-To: help@example.org\r\n"), "{text}");
        assert!(text.contains("Date: "), "{text}");
        // A line break in the subject cannot smuggle in a header.
        assert!(!text.contains("\r\nBcc:"), "{text}");
    }

    #[test]
    fn bad_addresses_are_refused_with_the_value() {
        let mut bad = email();
        bad.recipients = vec!["not an address".into()];
        assert!(build("d", &bad).unwrap_err().contains("not an address"));
        bad.recipients.clear();
        assert!(build("d", &bad).unwrap_err().contains("at least one recipient"));
    }
}
