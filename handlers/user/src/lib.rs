//! The user profile component (ADR-0003 `mini_user`): wasm glue around [`logic`].
//!
//! Consumes `users.registered` and `users.profile`; publishes `users.profile.response`.
//! Answers the query `profile`.

pub mod logic;

use saga_events::{UserProfileRequested, UserRegistered, topics};
use switchyard_sdk::{Event, HandleError, Handler, QueryError, QueryRouter, Router, config, json, late};

use logic::{Profile, ProfileDecision};

struct UserHandler;

impl Handler for UserHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay answers the same.
        Router::new("user", &event)
            .on(topics::USERS_REGISTERED, |reg, _| on_registered(reg))
            .on(topics::USERS_PROFILE, |req, e| {
                on_profile_request(req, e.timestamp_ms, may_wait(e)?)
            })
            .finish()
    }

    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        QueryRouter::new("user", &name, &args)
            .on(logic::PROFILE_QUERY, |by: logic::ByUser| {
                let stored = json::get::<Profile>(&logic::profile_key(&by.username))?;
                logic::profile(stored, &by.username)
            })
            .finish()
    }
}

fn on_registered(reg: UserRegistered) -> Result<(), HandleError> {
    let key = logic::profile_key(&reg.username);
    let existing = json::get::<Profile>(&key)?;
    match logic::create_profile(existing.as_ref(), &reg) {
        Some(profile) => {
            json::put_if_unchanged(&key, None, &profile)?;
            switchyard_sdk::info!("profile created", username = reg.username);
        }
        None => switchyard_sdk::info!("profile exists already", username = reg.username),
    }
    Ok(())
}

fn on_profile_request(req: UserProfileRequested, now: i64, may_wait: bool) -> Result<(), HandleError> {
    let profile = json::get::<Profile>(&logic::profile_key(&req.username))?;
    let response = match logic::decide(profile.as_ref(), &req, now, may_wait) {
        ProfileDecision::Answer(response) => response,
        ProfileDecision::Wait(why) => return Err(HandleError::retryable(why)),
    };
    json::publish(topics::USERS_PROFILE_RESPONSE, &req.username, &response)?;
    switchyard_sdk::debug!(
        "profile requested",
        username = req.username,
        replyTo = req.reply_to,
        found = response.found
    );
    Ok(())
}

/// Whether this delivery may still wait for a late registration (see [`late`]).
fn may_wait(event: &Event) -> Result<bool, HandleError> {
    let wait = late::wait_attempts(config::get(late::WAIT_ATTEMPTS_CONFIG).as_deref()).map_err(HandleError::fatal)?;
    Ok(late::may_wait(switchyard_sdk::attempt(event), wait))
}

switchyard_sdk::export_handler!(UserHandler);

#[cfg(test)]
mod glue_tests;
