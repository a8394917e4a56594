//! Small HTML helpers: escaping, the page layout, status pills, times and durations.

use std::fmt::Write;

use trigger_engine::{Environment, EnvironmentType, Millis, RunStatus};

/// Escapes text for HTML content and quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Which section of the navigation is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Runs,
    Tasks,
    Queues,
    Batches,
    Waitpoints,
    Keys,
}

impl Nav {
    const ALL: [Nav; 6] = [Nav::Runs, Nav::Tasks, Nav::Queues, Nav::Batches, Nav::Waitpoints, Nav::Keys];

    fn path(self) -> &'static str {
        match self {
            Nav::Runs => "runs",
            Nav::Tasks => "tasks",
            Nav::Queues => "queues",
            Nav::Batches => "batches",
            Nav::Waitpoints => "waitpoints",
            Nav::Keys => "keys",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Nav::Runs => "Runs",
            Nav::Tasks => "Tasks",
            Nav::Queues => "Queues",
            Nav::Batches => "Batches",
            Nav::Waitpoints => "Waitpoint tokens",
            Nav::Keys => "API keys",
        }
    }
}

pub(crate) fn env_label(kind: EnvironmentType) -> &'static str {
    match kind {
        EnvironmentType::Development => "Development",
        EnvironmentType::Staging => "Staging",
        EnvironmentType::Production => "Production",
        EnvironmentType::Preview => "Preview",
    }
}

/// A whole page.
pub(crate) struct Page<'a> {
    pub title: &'a str,
    pub nav: Nav,
    pub env: &'a Environment,
    pub envs: &'a [Environment],
    pub csrf: &'a str,
    /// The SSE endpoint the page script listens to, with the kind of updates it sends.
    pub live: Option<(&'a str, String)>,
    pub body: String,
}

impl Page<'_> {
    pub(crate) fn render(self) -> String {
        let slug = self.env.kind.slug();
        let mut nav = String::new();
        for item in Nav::ALL {
            let current = if item == self.nav { " aria-current=\"page\"" } else { "" };
            let _ =
                write!(nav, "<a href=\"/dashboard/{slug}/{}\"{current}>{}</a>", item.path(), item.label());
        }
        let mut envs = String::new();
        for e in self.envs {
            let current = if e.id == self.env.id { " aria-current=\"true\"" } else { "" };
            let _ = write!(
                envs,
                "<a class=\"env env-{s}\" href=\"/dashboard/{s}/{p}\" data-env=\"{s}\"{current}>{l}</a>",
                s = e.kind.slug(),
                p = self.nav.path(),
                l = env_label(e.kind)
            );
        }
        let live = match &self.live {
            Some((kind, url)) => format!(" data-live=\"{}\" data-live-kind=\"{kind}\"", esc(url)),
            None => String::new(),
        };
        format!(
            r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf" content="{csrf}">
<title>{title} · {envl} · trigger.rs</title>
<link rel="stylesheet" href="/dashboard/assets/app.css">
<script src="/dashboard/assets/app.js" defer></script>
</head>
<body{live} data-env="{slug}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="/dashboard/{slug}/runs"><span class="logo" aria-hidden="true">▲</span> trigger.rs</a>
  <nav class="envs" aria-label="Environment">{envs}</nav>
  <span class="live-dot" id="live-status" role="status" title="Live updates"{live_hidden}>connecting…</span>
  <form method="post" action="/dashboard/logout" class="logout"><input type="hidden" name="csrf" value="{csrf}"><button class="btn ghost small" type="submit">Sign out</button></form>
</header>
<nav class="tabs" aria-label="Sections">{nav}</nav>
<main id="main" tabindex="-1">
{body}
</main>
</body></html>"##,
            csrf = esc(self.csrf),
            title = esc(self.title),
            envl = env_label(self.env.kind),
            body = self.body,
            live_hidden = if self.live.is_some() { "" } else { " hidden" },
        )
    }
}

pub(crate) fn status_class(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Completed => "ok",
        RunStatus::Failed | RunStatus::Crashed | RunStatus::SystemFailure | RunStatus::TimedOut => "bad",
        RunStatus::Canceled | RunStatus::Expired => "muted",
        RunStatus::Executing | RunStatus::Dequeued => "run",
        RunStatus::Waiting => "wait",
        RunStatus::Queued | RunStatus::PendingVersion => "queued",
        RunStatus::Delayed => "delayed",
    }
}

pub(crate) fn status_label(status: RunStatus) -> &'static str {
    match status {
        RunStatus::PendingVersion => "Pending version",
        RunStatus::Delayed => "Delayed",
        RunStatus::Queued => "Queued",
        RunStatus::Dequeued => "Dequeued",
        RunStatus::Executing => "Executing",
        RunStatus::Waiting => "Waiting",
        RunStatus::Completed => "Completed",
        RunStatus::Canceled => "Canceled",
        RunStatus::Failed => "Failed",
        RunStatus::Crashed => "Crashed",
        RunStatus::SystemFailure => "System failure",
        RunStatus::Expired => "Expired",
        RunStatus::TimedOut => "Timed out",
    }
}

pub(crate) fn pill(status: RunStatus) -> String {
    format!(
        "<span class=\"pill {}\" data-status=\"{}\">{}</span>",
        status_class(status),
        status.as_str(),
        status_label(status)
    )
}

pub(crate) fn tag_pill(class: &str, text: &str) -> String {
    format!("<span class=\"pill {class}\">{}</span>", esc(text))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) inside a `<time>` the script turns into local time.
pub(crate) fn time(ms: Millis) -> String {
    format!("<time datetime=\"{}\">{} UTC</time>", iso(ms), utc(ms))
}

pub(crate) fn utc(ms: Millis) -> String {
    let (y, mo, d, h, mi, s, _) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

pub(crate) fn iso(ms: Millis) -> String {
    let (y, mo, d, h, mi, s, milli) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Civil date and time (UTC) of a millisecond timestamp (Howard Hinnant's algorithm).
fn civil(ms: Millis) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, (rem / 60) % 60, rem % 60, milli)
}

/// Parses `YYYY-MM-DDTHH:MM[:SS]` (a `datetime-local` value, read as UTC) or an RFC 3339
/// time ending in `Z`.
pub(crate) fn parse_utc(s: &str) -> Option<Millis> {
    let s = s.trim().trim_end_matches('Z');
    let (date, clock) = s.split_once(['T', ' ']).unwrap_or((s, "00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let clock = clock.split('.').next()?;
    let mut c = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi) = (c.next()??, c.next()??);
    let sec = c.next().flatten().unwrap_or(0);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + mi * 60 + sec) * 1000)
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub(crate) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Pretty-printed JSON when the text parses, else the text; escaped.
pub(crate) fn pretty(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => esc(&serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string())),
        Err(_) => esc(text),
    }
}

/// A hidden CSRF field.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A notice box from a `?notice=` parameter after an action.
pub(crate) fn notice(text: Option<&str>) -> String {
    match text {
        Some(t) if !t.is_empty() => {
            format!("<div class=\"notice\" role=\"status\" id=\"notice\">{}</div>", esc(t))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_escape() {
        let ms = 1_764_779_531_123;
        assert_eq!(iso(ms), "2025-12-03T16:32:11.123Z");
        assert_eq!(parse_utc("2025-12-03T16:32:11Z"), Some(ms - 123));
        assert_eq!(parse_utc("2025-12-03T16:32"), Some(ms - 11_123));
        assert_eq!(parse_utc("2024-02-29 00:00"), Some(1_709_164_800_000));
        assert_eq!(parse_utc("nope"), None);
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(65_000), "1m 05s");
    }
}
