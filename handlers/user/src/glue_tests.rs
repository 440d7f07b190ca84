//! The glue of lib.rs on the SDK's in-memory host, natively.

use saga_events::{UserProfileResponse, topics};
use serde_json::{Value, json};
use switchyard_sdk::HandleError;
use switchyard_sdk::testing::{TestHost, attempt, event};

use super::UserHandler;

fn host() -> TestHost {
    TestHost::new().allow_publishing(&[topics::USERS_PROFILE_RESPONSE])
}

fn registered() -> Value {
    json!({"username": "alice", "email": "alice@example.org", "registeredAt": 1, "source": "test"})
}

fn profile_request() -> Value {
    json!({"requestId": "r-1", "username": "alice", "replyTo": "notif", "requestedAt": 2})
}

#[test]
fn a_profile_request_that_overtakes_the_registration_waits_and_then_finds_it() {
    let mut host = host();
    let early = event(topics::USERS_PROFILE, &profile_request());
    let result = host.deliver::<UserHandler>(attempt(early.clone(), 1));
    assert!(matches!(result, Err(HandleError::Retryable(_))), "{result:?}");
    assert!(host.state.published.is_empty(), "no found:false while waiting");

    host.deliver::<UserHandler>(event(topics::USERS_REGISTERED, &registered()))
        .unwrap();
    host.deliver::<UserHandler>(attempt(early, 2)).unwrap();
    let answers: Vec<UserProfileResponse> = host.published_on(topics::USERS_PROFILE_RESPONSE);
    assert!(answers[0].found);
    assert_eq!(answers[0].email.as_deref(), Some("alice@example.org"));
}

#[test]
fn after_waiting_an_unknown_user_is_answered_not_found() {
    let mut host = host().with_config("wait-attempts", "1");
    let request = event(topics::USERS_PROFILE, &profile_request());
    host.deliver::<UserHandler>(attempt(request, 2)).unwrap();
    let answers: Vec<UserProfileResponse> = host.published_on(topics::USERS_PROFILE_RESPONSE);
    assert!(!answers[0].found);
}

#[test]
fn the_profile_query_reads_the_stored_profile() {
    let mut host = host();
    host.deliver::<UserHandler>(event(topics::USERS_REGISTERED, &registered()))
        .unwrap();
    let bytes = host.ask::<UserHandler>("profile", br#"{"username":"alice"}"#).unwrap();
    let profile: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(profile["email"], "alice@example.org");
    assert!(host.ask::<UserHandler>("profile", br#"{"username":"bob"}"#).is_err());
}
