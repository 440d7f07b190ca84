//! Waiting for an event that travels on another topic. Topics are not ordered with each
//! other, so `orders.created` can overtake the `users.registered` that opens the account
//! it charges. A handler that finds the record missing returns `retryable` for the first
//! attempts (the host retries with backoff) and decides for good on the next one, before
//! the route's retries run out and the event would become a dead letter.

/// Component config key: how many attempts may wait for a record that is not there yet.
/// Must be below the route's `retry.attempts` (default 5), or the event dead-letters
/// instead of getting its final answer.
pub const WAIT_ATTEMPTS_CONFIG: &str = "wait-attempts";
/// With the default retry policy (5 attempts, backoff from 200 ms doubling) the first
/// four attempts wait about 3 s in all; the fifth decides.
pub const DEFAULT_WAIT_ATTEMPTS: u32 = 4;

/// The number of waiting attempts from the component's config (`None`: not set).
pub fn wait_attempts(configured: Option<&str>) -> Result<u32, String> {
    match configured {
        None => Ok(DEFAULT_WAIT_ATTEMPTS),
        Some(text) => text.trim().parse::<u32>().map_err(|_| {
            format!("config {WAIT_ATTEMPTS_CONFIG} = {text:?} is not a whole number of attempts (e.g. 4)")
        }),
    }
}

/// True when attempt `attempt` (1-based) may still wait rather than decide.
pub fn may_wait(attempt: u32, wait_attempts: u32) -> bool {
    attempt <= wait_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_configured_attempts_then_decides() {
        let n = wait_attempts(None).unwrap();
        assert!((1..=n).all(|a| may_wait(a, n)));
        assert!(!may_wait(n + 1, n));
        assert_eq!(wait_attempts(Some(" 0 ")), Ok(0));
        assert!(!may_wait(1, 0), "0: decide on the first attempt");
        assert!(wait_attempts(Some("lots")).unwrap_err().contains(WAIT_ATTEMPTS_CONFIG));
    }
}
