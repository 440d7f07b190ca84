//! `switchyard trace REQUEST_ID`: the timeline of one request, as the console shows it,
//! read from a running host's admin API.

use std::process::ExitCode;

use anyhow::Result;
use switchyard::admin::client::ClientError;
use switchyard::admin::views::Timeline;

use super::Cli;

/// `2026-11-26 01:44:23.120` (UTC).
fn when(ms: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The timeline as a table, one line per handled event.
pub fn render(timeline: &Timeline) -> String {
    let mut out = format!("request {}\n\n", timeline.request_id);
    out.push_str(&format!(
        "{:>3}  {:<23} {:>7}  {:<12} {:<12} {:<13} {:<36} {}\n",
        "#", "handled at (UTC)", "+ms", "component", "version", "outcome", "topic[partition]@offset", "event id"
    ));
    let first = timeline.events.first().map_or(0, |e| e.handled_at_ms);
    for (i, e) in timeline.events.iter().enumerate() {
        let version: String = e.version.as_deref().unwrap_or("-").chars().take(12).collect();
        out.push_str(&format!(
            "{:>3}  {:<23} {:>7}  {:<12} {:<12} {:<13} {:<36} {}\n",
            i + 1,
            when(e.handled_at_ms),
            e.handled_at_ms - first,
            e.component,
            version,
            e.outcome.as_deref().unwrap_or("-"),
            format!("{}[{}]@{}", e.topic, e.partition, e.offset),
            e.event_id
        ));
    }
    out.push_str(&format!("\n{} event(s)", timeline.events.len()));
    if timeline.truncated {
        out.push_str(" (the first ones only)");
    }
    if let Some(trace) = timeline.events.iter().find_map(|e| e.trace_id.as_deref()) {
        out.push_str(&format!("; trace id {trace}"));
    }
    out.push('\n');
    out
}

pub async fn trace(cli: &Cli, request_id: &str, json: bool) -> Result<ExitCode> {
    let timeline = match super::ops::client(cli).timeline(request_id).await {
        Ok(timeline) => timeline,
        Err(ClientError::Refused {
            status: 404, detail, ..
        }) => {
            eprintln!("{detail}");
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => return Err(err.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&timeline)?);
    } else {
        print!("{}", render(&timeline));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::when;

    #[test]
    fn times_are_civil_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00.000");
        assert_eq!(when(1_795_657_463_120), "2026-11-26 01:44:23.120");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
