//! Storage keys built from untrusted text. Components lay out keys as `/`-separated
//! paths (`pending/<requestId>/<status>`) and list them by prefix, so a value that
//! contains `/` could otherwise reach into a neighbour's prefix.

/// Escapes `%` and `/` in one key segment (percent-encoding), leaving other text as is
/// so keys stay readable in the operator's tools.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_separators_and_the_escape_char() {
        assert_eq!(segment("alice"), "alice");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment("100%/x"), "100%25%2Fx");
        // Distinct inputs stay distinct, so no two segments collide.
        assert_ne!(segment("a%2Fb"), segment("a/b"));
    }
}
