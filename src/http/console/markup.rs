//! The page shell (navigation, flash message, stylesheet and script) and the small formatting
//! helpers every page uses: times as `<time>` (UTC from the server, the browser's zone from the
//! script), numbers with thousands separators.

use maud::{html, Markup, DOCTYPE};

use super::session::Flash;
use crate::clock::UnixMs;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Migration,
    Messages,
    /// A collector's page (under the overview).
    Collector,
}

/// A whole console page. `csrf` is the session's token (the logout form carries it).
pub(super) fn page(
    title: &str,
    nav: Nav,
    csrf: Option<&str>,
    flash: Option<&Flash>,
    body: &Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · journal-gateway" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "journal-gateway" }
                    @if let Some(csrf) = csrf {
                        nav {
                            a href="/" aria-current=[current(nav, Nav::Overview)] { "Overview" }
                            a href="/migration" aria-current=[current(nav, Nav::Migration)] { "Migration" }
                            a href="/messages" aria-current=[current(nav, Nav::Messages)] { "Messages" }
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button.link type="submit" id="logout" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    @if let Some(f) = flash {
                        p.flash.ok[f.ok].err[!f.ok] id="flash" role="status" { (f.text) }
                    }
                    (body)
                }
            }
        }
    }
}

fn current(nav: Nav, this: Nav) -> Option<&'static str> {
    (nav == this || (nav == Nav::Collector && this == Nav::Overview)).then_some("page")
}

/// `1234567` as `1,234,567`.
pub(super) fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count: thousands separators, with a binary unit beside it from 1 KiB on.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{} B", num(n));
    }
    let mut value = n;
    let mut unit = 0;
    let mut tenths = 0;
    value /= 1024;
    let mut rest = n % 1024;
    while value >= 1024 && unit + 1 < UNITS.len() {
        rest = value % 1024;
        value /= 1024;
        unit += 1;
    }
    if value < 100 {
        tenths = rest * 10 / 1024;
    }
    if value < 100 {
        format!("{} B ({}.{} {})", num(n), num(value), tenths, UNITS[unit])
    } else {
        format!("{} B ({} {})", num(n), num(value), UNITS[unit])
    }
}

/// `2026-11-28 18:30:00 UTC`.
pub(super) fn utc_text(at: UnixMs) -> Option<(String, String)> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000).ok()?;
    let iso = at.rfc3339()?;
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Some((iso, text))
}

/// A time: UTC as rendered by the server; the script shows it in the browser's zone and keeps
/// UTC in the hover title.
pub(super) fn time(at: Option<UnixMs>) -> Markup {
    if let Some((iso, text)) = at.and_then(utc_text) {
        html! { time datetime=(iso) title=(text) { (text) } }
    } else {
        html! { span.muted { "never" } }
    }
}

/// A yes/no badge.
pub(super) fn badge(ok: bool, yes: &str, no: &str) -> Markup {
    html! {
        @if ok { span.badge.good { (yes) } } @else { span.badge.bad { (no) } }
    }
}

/// The compiled-in stylesheet.
pub(super) const CSS: &str = include_str!("assets/console.css");
/// The compiled-in script (live refresh, local times).
pub(super) const JS: &str = include_str!("assets/console.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1,536 B (1.5 KiB)");
        assert_eq!(bytes(3 * 1024 * 1024), "3,145,728 B (3.0 MiB)");
    }

    #[test]
    fn times_render_in_utc_without_script() {
        let (iso, text) = utc_text(UnixMs(1_700_000_000_000)).unwrap();
        assert_eq!(iso, "2023-11-14T22:13:20Z");
        assert_eq!(text, "2023-11-14 22:13:20 UTC");
        let m = time(Some(UnixMs(1_700_000_000_000))).into_string();
        assert!(m.contains("datetime=\"2023-11-14T22:13:20Z\""), "{m}");
        assert!(time(None).into_string().contains("never"));
    }
}
