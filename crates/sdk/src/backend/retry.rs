//! When and how long the HTTP backend waits before sending a request again (see
//! [`RequestRetry`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{HeaderMap, StatusCode};

/// How the [`Http`](super::Http) backend retries a request, like the TypeScript SDK's API
/// client: connection errors and the answers 408, 409, 429 and 5xx are retried with
/// exponential backoff; other 4xx answers never are. A `Retry-After` header (seconds or an
/// HTTP date) or, on 429, `x-ratelimit-reset` (epoch milliseconds) replaces the backoff, and
/// `x-should-retry: true|false` overrides the rule.
///
/// Retrying is safe: a trigger or a batch carries `x-trigger-request-idempotency-key` (the
/// same on every retry, and the server answers a repeat with the first answer), batch items
/// are taken once per index, and worker calls name the snapshot they act on. A request
/// that is not idempotent (metadata operations, log lines, a token without a key) is sent
/// again only when it cannot have reached the server (the connection failed) or the server
/// answered that it did nothing (an error status), never after a connection that broke
/// while the answer was awaited. The worker's dequeue is sent once: its loop asks again,
/// and a shutdown is not held up by retries while the server is away.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRetry {
    /// Attempts in all, the first included (1 turns retrying off). Default 5.
    pub max_attempts: u32,
    /// Delay before the first retry. Default 1 s.
    pub min_timeout: Duration,
    /// Longest delay, also the cap on a server's `Retry-After`. Default 30 s.
    pub max_timeout: Duration,
    /// Growth of the delay per retry. Default 1.6.
    pub factor: f64,
    /// Multiplies each backoff delay by a random factor in [1, 2) so that many clients do
    /// not retry in step. Default true (the TS SDK's default is false).
    pub randomize: bool,
}

impl Default for RequestRetry {
    fn default() -> Self {
        RequestRetry {
            max_attempts: 5,
            min_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(30),
            factor: 1.6,
            randomize: true,
        }
    }
}

impl RequestRetry {
    /// No retries.
    pub fn none() -> Self {
        RequestRetry { max_attempts: 1, ..Default::default() }
    }

    /// The backoff before retry number `retry` (1 for the first), with `jitter` in [0, 1).
    pub(crate) fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = self.factor.max(1.0).powi(retry.saturating_sub(1).min(64) as i32);
        let scale = if self.randomize { 1.0 + jitter.clamp(0.0, 0.999_999) } else { 1.0 };
        let ms = (self.min_timeout.as_millis() as f64 * exp * scale).min(self.max_timeout.as_millis() as f64);
        Duration::from_millis(ms.max(0.0) as u64)
    }
}

/// Whether an answer with this status is worth another attempt.
pub(crate) fn retryable_status(status: StatusCode, headers: &HeaderMap) -> bool {
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// How long the server asked to wait: `Retry-After` (seconds or an HTTP date), or on 429
/// `x-ratelimit-reset` (epoch ms).
pub(crate) fn server_delay(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(value) = header("retry-after-ms") {
        if let Ok(ms) = value.parse::<f64>() {
            return Some(Duration::from_millis(ms.max(0.0) as u64));
        }
    }
    if let Some(value) = header("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            return Some(Duration::from_millis((secs.max(0.0) * 1000.0) as u64));
        }
        if let Some(at) = parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
            let at = UNIX_EPOCH + Duration::from_millis(reset);
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    None
}

/// The delay before retry number `retry`: the server's, capped at `max_timeout`, or the
/// backoff.
pub(crate) fn delay(
    policy: &RequestRetry,
    retry: u32,
    answer: Option<(StatusCode, &HeaderMap)>,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    answer
        .and_then(|(status, headers)| server_delay(status, headers, now))
        .map(|d| d.min(policy.max_timeout))
        .unwrap_or_else(|| policy.backoff(retry, jitter))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form `Retry-After` dates take.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || day == 0 || day > 31 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days since the epoch for a civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3600 + m * 60 + s) as i64;
    (secs >= 0).then(|| UNIX_EPOCH + Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_cap_with_jitter_in_one_to_two() {
        let p = RequestRetry { randomize: false, ..Default::default() };
        let ms = |n| p.backoff(n, 0.0).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [1000, 1600, 2560, 4096]);
        assert_eq!(p.backoff(20, 0.0), Duration::from_secs(30), "capped at max_timeout");
        let r = RequestRetry::default();
        assert_eq!(r.backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(r.backoff(1, 0.5), Duration::from_millis(1500));
        assert!(r.backoff(1, 0.9999) < Duration::from_secs(2));
    }

    #[test]
    fn statuses_and_the_should_retry_header() {
        let none = HeaderMap::new();
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert!(retryable_status(StatusCode::from_u16(s).unwrap(), &none), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 415, 422] {
            assert!(!retryable_status(StatusCode::from_u16(s).unwrap(), &none), "{s}");
        }
        assert!(!retryable_status(StatusCode::SERVICE_UNAVAILABLE, &headers(&[("x-should-retry", "false")])));
        assert!(retryable_status(StatusCode::BAD_REQUEST, &headers(&[("x-should-retry", "true")])));
    }

    #[test]
    fn the_servers_delay_wins_over_the_backoff_and_is_capped() {
        let p = RequestRetry { randomize: false, ..Default::default() };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("retry-after", "2")]);
        assert_eq!(
            delay(&p, 1, Some((StatusCode::SERVICE_UNAVAILABLE, &h)), now, 0.0),
            Duration::from_secs(2)
        );
        let h = headers(&[("retry-after", "3600")]);
        assert_eq!(
            delay(&p, 1, Some((StatusCode::SERVICE_UNAVAILABLE, &h)), now, 0.0),
            Duration::from_secs(30)
        );
        // 1_700_000_005 s is Tue, 14 Nov 2023 22:13:25 GMT.
        let h = headers(&[("retry-after", "Tue, 14 Nov 2023 22:13:25 GMT")]);
        assert_eq!(
            delay(&p, 1, Some((StatusCode::SERVICE_UNAVAILABLE, &h)), now, 0.0),
            Duration::from_secs(5)
        );
        let h = headers(&[("x-ratelimit-reset", "1700000000750")]);
        assert_eq!(
            delay(&p, 1, Some((StatusCode::TOO_MANY_REQUESTS, &h)), now, 0.0),
            Duration::from_millis(750)
        );
        assert_eq!(
            delay(&p, 2, Some((StatusCode::SERVICE_UNAVAILABLE, &h)), now, 0.0),
            Duration::from_millis(1600)
        );
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(delay(&p, 1, Some((StatusCode::BAD_GATEWAY, &h)), now, 0.0), Duration::from_secs(1));
        assert_eq!(delay(&p, 3, None, now, 0.0), Duration::from_millis(2560));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(UNIX_EPOCH));
        assert_eq!(parse_http_date("Thu, 01 Foo 1970 00:00:00 GMT"), None);
    }
}
