//! The console's pages (GET): overview, collector, retire confirmation, migration, message.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::markup::{badge, bytes, num, page, time, Nav};
use super::Authed;
use crate::clock::UnixMs;
use crate::config::TlsMode;
use crate::http::api::{self, blocking};
use crate::http::views::{self, CollectorInfo, MessageView};
use crate::http::{ApiError, AppState};
use crate::index::{Run, Stats};
use crate::migration::{Check, CollectorVerdict, Verdict};

/// Runs listed per history page.
const HISTORY_PAGE: usize = 20;

/// An error page for a failed read (the details are in the log).
fn error_page(authed: &Authed, e: &ApiError) -> Response {
    (
        e.status,
        page(
            "Error",
            Nav::Overview,
            Some(authed.csrf()),
            None,
            &html! { h1 { "Error" } p.flash.err { (e.message) } },
        ),
    )
        .into_response()
}

/// What the overview shows.
struct OverviewData {
    stats: Stats,
    collectors: Vec<CollectorInfo>,
    /// The SMTP endpoint in force.
    smtp: super::SmtpEndpoint,
}

/// When a collector polls next: after its interval, if it polls at all.
fn next_poll(c: &CollectorInfo) -> Option<UnixMs> {
    if !c.active || c.retired {
        return None;
    }
    let last = c.last_run_ms.unwrap_or(UnixMs::now());
    Some(UnixMs(last.0.saturating_add(c.interval_seconds * 1000)))
}

fn collector_state_badge(c: &CollectorInfo) -> Markup {
    html! {
        @if c.retired { span.badge.muted { "retired" } }
        @else if c.active { span.badge.good { "active" } }
        @else { span.badge.warn { "inactive" } }
    }
}

/// `GET /`.
#[allow(clippy::too_many_lines)] // one page's markup, read top to bottom
pub(super) async fn overview(State(state): State<AppState>, authed: Authed) -> Response {
    let data = {
        let state = state.clone();
        blocking(move || {
            Ok(OverviewData {
                stats: state.ctx.archive.stats()?,
                collectors: views::collector_infos(&state.ctx.store, &state.ctx.collectors)?,
                smtp: super::smtp_endpoint(&state),
            })
        })
        .await
    };
    let data = match data {
        Ok(d) => d,
        Err(e) => return error_page(&authed, &e),
    };
    let s = &data.stats;
    let smtp = &data.smtp;
    let flash = authed.take_flash(&state);
    let body = html! {
        h1 { "Overview" }
        div #live data-refresh="5" {
            section.cards {
                div.card #total-messages {
                    h2 { "Messages archived" }
                    p.big { (num(s.messages)) }
                    p.muted { "Conflicts (Message-ID reused): " (num(s.conflicts)) }
                }
                div.card #collected-since {
                    h2 { "Data collected since" }
                    p.big { (time(s.first_archive_ms)) }
                }
                div.card #totals-smtp {
                    h2 { "Over SMTP" }
                    p.big { (num(s.archived_smtp)) }
                    p.muted { (num(s.duplicates_smtp)) " duplicates · " (bytes(s.bytes_smtp)) }
                }
                div.card #totals-pop3 {
                    h2 { "Over POP3" }
                    p.big { (num(s.archived_pop3)) }
                    p.muted { (num(s.duplicates_pop3)) " duplicates · " (bytes(s.bytes_pop3)) }
                }
            }
            section.card #smtp-endpoint {
                h2 { "SMTP journal endpoint" }
                dl {
                    dt { "Host name" } dd { (smtp.hostname) }
                    dt { "Listeners (STARTTLS)" }
                    dd { @for a in &smtp.listen { code { (a) } " " } @if smtp.listen.is_empty() { "none" } }
                    dt { "Listeners (implicit TLS)" }
                    dd { @for a in &smtp.tls_listen { code { (a) } " " } @if smtp.tls_listen.is_empty() { "none" } }
                    dt { "STARTTLS required" } dd { (if smtp.require_starttls { "yes" } else { "no" }) }
                    dt { "Certificate SHA-256" }
                    dd { @if let Some(f) = &smtp.fingerprint { code.wrap { (f) } } @else { span.muted { "not available" } } }
                    dt { "Accepted addresses" }
                    dd { @for a in state.accepted.current().iter() { code { (a) } " " } }
                    dt { "First SMTP arrival" } dd { (time(s.first_smtp_ms)) }
                    dt { "Last SMTP arrival" } dd { (time(s.last_smtp_ms)) }
                }
            }
            section.card {
                h2 { "POP3 collectors" }
                p { a #new-collector href="/collectors/new" { "Add a journal mailbox collector…" } }
                @if data.collectors.is_empty() {
                    p.muted { "No collector is configured." }
                } @else {
                    div.scroll {
                        table #collectors {
                            thead { tr { th { "Name" } th { "State" } th { "Last poll" } th { "Result" } th.n { "Queue" } th { "Next poll" } } }
                            tbody {
                                @for c in &data.collectors {
                                    tr {
                                        td { a href={ "/collectors/" (c.name) } { (c.name) } }
                                        td { (collector_state_badge(c)) }
                                        td { (time(c.last_run_ms)) }
                                        td {
                                            @if let Some(e) = &c.last_error { span.badge.bad title=(e) { "error" } }
                                            @else if c.last_run_ms.is_some() { span.badge.good { "ok" } }
                                            @else { span.muted { "—" } }
                                        }
                                        td.n { @if let Some(d) = c.queue_depth { (num(d)) } @else { span.muted { "—" } } }
                                        td { @match next_poll(c) { Some(t) => (time(Some(t))), None => span.muted { "not polling" } } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @let errors: Vec<&CollectorInfo> = data.collectors.iter().filter(|c| c.last_error.is_some()).collect();
            @if !errors.is_empty() {
                section.card #recent-errors {
                    h2 { "Recent errors" }
                    ul { @for c in errors { li { strong { (c.name) } ": " (c.last_error.as_deref().unwrap_or_default()) } } }
                }
            }
        }
    };
    page(
        "Overview",
        Nav::Overview,
        Some(authed.csrf()),
        flash.as_ref(),
        &body,
    )
    .into_response()
}

/// The TLS and trust settings of a collector, in words.
fn tls_words(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Implicit => "implicit TLS (POP3S)",
        TlsMode::Starttls => "STLS (STARTTLS)",
        TlsMode::None => "none (insecure)",
    }
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    page: Option<usize>,
}

/// What the collector page shows.
struct CollectorData {
    info: CollectorInfo,
    runs: Vec<Run>,
    more: bool,
    verdict: Option<CollectorVerdict>,
}

async fn collector_data(
    state: &AppState,
    name: &str,
    page_no: usize,
) -> Result<CollectorData, ApiError> {
    if state.ctx.collectors.get(name).is_none() {
        return Err(ApiError::not_found(format!("no collector named {name:?}")));
    }
    let verdict = api::migration_verdict_of(state).await?;
    let (state, name) = (state.clone(), name.to_string());
    blocking(move || {
        let info = views::collector_infos(&state.ctx.store, &state.ctx.collectors)?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no collector named {name:?}")))?;
        let skip = page_no * HISTORY_PAGE;
        let mut runs = state.ctx.store.runs(&name, skip + HISTORY_PAGE + 1)?;
        let more = runs.len() > skip + HISTORY_PAGE;
        runs = runs.into_iter().skip(skip).take(HISTORY_PAGE).collect();
        Ok(CollectorData {
            info,
            runs,
            more,
            verdict: verdict.collector(&name).cloned(),
        })
    })
    .await
}

fn reasons_list(v: &CollectorVerdict, id: &str) -> Markup {
    html! {
        ul.reasons id=(id) {
            @for c in v.checks.iter().filter(|c| !c.ok) { li { strong { (check_title(&c.name)) } ": " (c.detail) } }
        }
    }
}

fn check_title(name: &str) -> &'static str {
    match name {
        "smtp_traffic" => "SMTP traffic",
        "queue_empty" => "Mailbox empty",
        "overlap" => "Overlap",
        _ => "Check",
    }
}

/// `GET /collectors/{name}`.
#[allow(clippy::too_many_lines)] // one page's markup, read top to bottom
pub(super) async fn collector(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    let page_no = q.ok().and_then(|Query(q)| q.page).unwrap_or(0).min(10_000);
    let data = match collector_data(&state, &name, page_no).await {
        Ok(d) => d,
        Err(e) => return error_page(&authed, &e),
    };
    let Some(cfg) = state.ctx.collectors.get(&name).map(|c| c.config().clone()) else {
        return error_page(&authed, &ApiError::not_found("no such collector"));
    };
    let c = &data.info;
    let csrf = authed.csrf().to_string();
    let flash = authed.take_flash(&state);
    let trust = if let Some(pin) = &cfg.pin_sha256 {
        format!("pinned certificate SHA-256 {pin}")
    } else if let Some(ca) = &cfg.ca_file {
        format!("CA file {}", ca.display())
    } else if cfg.tls == TlsMode::None {
        "no TLS".to_string()
    } else {
        "system CA roots".to_string()
    };
    let body = html! {
        p.crumbs { a href="/" { "Overview" } " › collector" }
        h1 { "Collector " (c.name) " " (collector_state_badge(c)) }
        div.grid2 {
            section.card #settings {
                h2 { "Settings (configuration)" }
                dl {
                    dt { "Host" } dd { code { (c.host) } }
                    dt { "Port" } dd { (c.port) }
                    dt { "TLS" } dd { (tls_words(cfg.tls)) }
                    dt { "Trust" } dd.wrap { (trust) }
                    dt { "User" } dd { code { (c.username) } }
                    dt { "Poll interval" } dd { (num(c.interval_seconds)) " s" }
                    dt { "Delete after archiving" } dd { (if c.delete { "yes" } else { "no" }) }
                    dt { "Test collection size" } dd { (num(u64::from(cfg.test_limit))) }
                    dt { "Defined in" } dd.wrap #defined-in { @match &cfg.dropin {
                        Some(f) => { "drop-in " code { (f.display()) } }
                        None => { "the configuration file (read-only here)" }
                    } }
                }
                p.muted { "The password is never shown." }
                @if cfg.dropin.is_some() {
                    p { a #edit href={ "/collectors/" (c.name) "/edit" } { "Edit saved collector…" } }
                    form method="post" action={ "/collectors/" (c.name) "/remove" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button #remove type="submit" { "Remove saved collector" }
                        " "
                        span.muted { "Deletes its drop-in file; it stops polling at the next restart." }
                    }
                }
            }
            section.card #state data-refresh="2" {
                h2 { "State" }
                @if !c.retired {
                    form.switch method="post" action={ "/collectors/" (c.name) "/active" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="active" value=(if c.active { "off" } else { "on" });
                        span { "Active" }
                        button #active-toggle type="submit" role="switch" aria-checked=(if c.active { "true" } else { "false" })
                            title=(if c.active { "Stop polling" } else { "Start polling" }) {
                            span.knob {}
                            span.label { (if c.active { "On" } else { "Off" }) }
                        }
                    }
                }
                dl {
                    dt { "Messages on the server" } dd #queue-depth { @if let Some(d) = c.queue_depth { (num(d)) } @else { span.muted { "unknown" } } }
                    dt { "Last poll" } dd { (time(c.last_run_ms)) }
                    dt { "Last success" } dd { (time(c.last_success_ms)) }
                    dt { "Next poll" } dd { @match next_poll(c) { Some(t) => (time(Some(t))), None => span.muted { "not polling" } } }
                    @if let Some(e) = &c.last_error { dt { "Last error" } dd.err { (e) } }
                    @if let Some(p) = &c.progress {
                        dt { (if p.test { "Test collection running" } else { "Collection running" }) }
                        dd #progress { (num(p.done)) " done / "
                            @match p.on_server { Some(n) => { (num(n)) " on the server" } None => { "connecting" } } }
                    }
                }
            }
        }
        @if !c.retired {
            section.card #actions {
                h2 { "Collect" }
                div.actions {
                    form method="post" action={ "/collectors/" (c.name) "/test" } {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="limit" { "Test collection: how many messages?" }
                        div.row {
                            input #limit type="number" name="limit" min="1" max="100000" value=(cfg.test_limit) required;
                            button #test-collection type="submit" { "Test collection" }
                        }
                        p.muted { "Archives up to that many messages and deletes nothing, even on an inactive collector." }
                    }
                    form method="post" action={ "/collectors/" (c.name) "/collect" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button #collect-now type="submit" { "Collect now" }
                        p.muted { "Drains the mailbox now" (if c.delete { ", deleting what is archived." } else { " (delete = false: nothing is deleted)." }) }
                    }
                }
            }
        }
        section.card #retire-section {
            h2 { "Retire" }
            @if c.retired {
                p #retired { "Retired " (time(c.retired_ms)) ". It never polls again; its history stays." }
            } @else if let Some(v) = &data.verdict {
                @if v.safe_to_retire {
                    p { (badge(true, "safe to retire", "")) " Every check of the cutover passes: retiring loses nothing." }
                    a.button #retire href={ "/collectors/" (c.name) "/retire" } { "Retire…" }
                } @else {
                    p { (badge(false, "", "not safe to retire")) " Retiring now could lose mail:" }
                    (reasons_list(v, "retire-reasons"))
                    button #retire type="button" disabled { "Retire" }
                    p.danger-zone { a #retire-anyway href={ "/collectors/" (c.name) "/retire?force=1" } { "Retire anyway, although it is not safe…" } }
                }
            }
        }
        section.card {
            h2 { "Collection history" }
            div.scroll {
                table #history {
                    thead { tr {
                        th { "Kind" } th { "Start" } th { "End" } th.n { "On server" } th.n { "Retrieved" }
                        th.n { "Archived" } th.n { "Duplicates" } th.n { "Deleted" } th.n { "Bytes" } th { "Error" }
                    } }
                    tbody {
                        @for r in &data.runs {
                            tr {
                                td { (r.kind.as_str()) @if let Some(l) = r.limit() { " (" (num(u64::from(l))) ")" } }
                                td { (time(Some(r.started_ms))) }
                                td { (time(Some(r.ended_ms))) }
                                td.n { @if let Some(n) = r.on_server { (num(n)) } @else { "—" } }
                                td.n.retrieved { (num(r.retrieved)) }
                                td.n.archived { (num(r.archived)) }
                                td.n { (num(r.duplicates)) }
                                td.n.deleted { (num(r.deleted)) }
                                td.n { (num(r.bytes)) }
                                td.err { (r.error.as_deref().unwrap_or_default()) }
                            }
                        }
                        @if data.runs.is_empty() { tr { td colspan="10" .muted { "No run yet." } } }
                    }
                }
            }
            nav.pager {
                @if page_no > 0 { a #newer href={ "/collectors/" (c.name) "?page=" (page_no - 1) } { "‹ Newer" } }
                span.muted { "Page " (page_no + 1) }
                @if data.more { a #older href={ "/collectors/" (c.name) "?page=" (page_no + 1) } { "Older ›" } }
            }
        }
    };
    page(
        &format!("Collector {name}"),
        Nav::Collector,
        Some(&csrf),
        flash.as_ref(),
        &body,
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct ForceQuery {
    #[serde(default)]
    force: Option<String>,
}

/// `GET /collectors/{name}/retire[?force=1]`: the confirmation step.
pub(super) async fn retire_confirm(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    q: Result<Query<ForceQuery>, QueryRejection>,
) -> Response {
    let force = q
        .ok()
        .and_then(|Query(q)| q.force)
        .is_some_and(|f| f == "1" || f == "true");
    let data = match collector_data(&state, &name, 0).await {
        Ok(d) => d,
        Err(e) => return error_page(&authed, &e),
    };
    let csrf = authed.csrf().to_string();
    let Some(v) = data.verdict else {
        return error_page(
            &authed,
            &ApiError::not_found("no verdict for this collector"),
        );
    };
    let body = html! {
        p.crumbs { a href="/" { "Overview" } " › " a href={ "/collectors/" (name) } { (name) } " › retire" }
        h1 { "Retire collector " (name) "?" }
        @if data.info.retired {
            p { "It is already retired." }
        } @else if v.safe_to_retire {
            p { "The cutover verdict says it is safe: SMTP carries the journal, the mailbox is empty and "
                "everything collected since the cutover also came over SMTP. Retiring stops this collector for good "
                "(its history stays); the POP3 mailbox and Exchange's POP3 connector can then be removed." }
            form method="post" action={ "/collectors/" (name) "/retire" } {
                input type="hidden" name="csrf" value=(csrf);
                button #retire-confirm type="submit" { "Yes, retire " (name) }
                " " a href={ "/collectors/" (name) } { "Cancel" }
            }
        } @else if force {
            p.flash.err { strong { "Not safe." } " Retiring now stops collecting mail that may still be in the mailbox or still arrive there:" }
            (reasons_list(&v, "retire-reasons"))
            form.danger method="post" action={ "/collectors/" (name) "/retire" } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="force" value="1";
                label { input #understand type="checkbox" name="understand" value="1" required;
                    " I understand that messages still in the mailbox, or delivered there later, will not be archived." }
                button.danger #retire-anyway-confirm type="submit" { "Retire anyway" }
                " " a href={ "/collectors/" (name) } { "Cancel" }
            }
        } @else {
            p { "Not safe to retire yet:" }
            (reasons_list(&v, "retire-reasons"))
            button type="button" disabled { "Retire" }
            p { a href={ "/collectors/" (name) "/retire?force=1" } { "Retire anyway, although it is not safe…" } }
        }
    };
    page(
        &format!("Retire {name}"),
        Nav::Collector,
        Some(&csrf),
        None,
        &body,
    )
    .into_response()
}

fn figure(check: &Check, key: &str) -> u64 {
    check
        .figures
        .get(key)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn step(id: &str, n: u32, title: &str, done: bool, content: &Markup) -> Markup {
    html! {
        li.step.done[done] id=(id) {
            div.step-head {
                span.step-no { (n) }
                h2 { (title) }
                (badge(done, "done", "waiting"))
            }
            div.step-body { (content) }
        }
    }
}

/// `GET /migration`.
#[allow(clippy::too_many_lines)] // one page's markup, read top to bottom
pub(super) async fn migration(State(state): State<AppState>, authed: Authed) -> Response {
    let data = async {
        let verdict = api::migration_verdict_of(&state).await?;
        let st = state.clone();
        let (totals, infos) = blocking(move || {
            Ok((
                st.ctx.archive.stats()?,
                views::collector_infos(&st.ctx.store, &st.ctx.collectors)?,
            ))
        })
        .await?;
        Ok::<(Verdict, Stats, Vec<CollectorInfo>), ApiError>((verdict, totals, infos))
    }
    .await;
    let (verdict, totals, infos) = match data {
        Ok(d) => d,
        Err(e) => return error_page(&authed, &e),
    };
    let csrf = authed.csrf().to_string();
    let flash = authed.take_flash(&state);
    let first_by = |entry: &str| -> Option<UnixMs> {
        let entry = entry.to_ascii_lowercase();
        totals
            .first_smtp_by_address
            .iter()
            .filter(|(a, _)| {
                let a = a.to_ascii_lowercase();
                if entry.starts_with('@') {
                    a.ends_with(&entry)
                } else {
                    a == entry
                }
            })
            .map(|(_, at)| *at)
            .min()
    };
    let all_receiving = !state.accepted.current().is_empty()
        && state
            .accepted
            .current()
            .iter()
            .all(|a| first_by(a).is_some());
    let live: Vec<&CollectorVerdict> = verdict.collectors.iter().filter(|v| !v.retired).collect();
    let drained = live
        .iter()
        .all(|v| v.checks.iter().any(|c| c.name == "queue_empty" && c.ok));
    let overlap_ok = live
        .iter()
        .all(|v| v.checks.iter().any(|c| c.name == "overlap" && c.ok));
    let body = html! {
        h1 { "Migration from POP3 to SMTP journaling" }
        p.lead { "Exchange's journal rule used to deliver into a mailbox that this gateway collects over POP3. "
            "The cutover points the rule at the gateway's SMTP address instead. Follow the steps; each shows its live state. "
            "A collector may be retired once its mailbox is empty and nothing arrives there any more." }
        div #live data-refresh="5" {
            ol.steps {
                (step("step-smtp", 1, "Point the journal rule at the gateway's SMTP address", all_receiving, &html! {
                    p { "In Exchange: stop transport, change the journal rule's recipient to the gateway's external contact, restart transport." }
                    table #accepted {
                        thead { tr { th { "Accepted address" } th { "First journal report" } } }
                        tbody { @for a in state.accepted.current().iter() { tr {
                            td { code { (a) } }
                            td { @match first_by(a) { Some(t) => (time(Some(t))), None => span.badge.warn { "no traffic yet" } } }
                        } } }
                    }
                }))
                (step("step-confirm", 2, "Confirm journal reports arrive over SMTP", totals.first_smtp_ms.is_some(), &html! {
                    dl {
                        dt { "First SMTP arrival" } dd { (time(totals.first_smtp_ms)) }
                        dt { "Last SMTP arrival" } dd { (time(totals.last_smtp_ms)) }
                        dt { "Archived over SMTP" } dd { (num(totals.archived_smtp)) " (" (num(totals.duplicates_smtp)) " duplicates)" }
                    }
                }))
                (step("step-drain", 3, "Let each collector drain its mailbox", drained && !live.is_empty(), &html! {
                    p { "The mailbox must be empty at two polls after the first SMTP arrival, the last one recent." }
                    table #queues {
                        thead { tr { th { "Collector" } th { "State" } th.n { "Queue" } th { "Last poll" } th { "Check" } } }
                        tbody { @for v in &verdict.collectors {
                            @let info = infos.iter().find(|i| i.name == v.name);
                            tr {
                                td { a href={ "/collectors/" (v.name) } { (v.name) } }
                                td { @if let Some(i) = info { (collector_state_badge(i)) } }
                                td.n { @match info.and_then(|i| i.queue_depth) { Some(d) => (num(d)), None => "—" } }
                                td { (time(info.and_then(|i| i.last_run_ms))) }
                                td { @for c in v.checks.iter().filter(|c| c.name == "queue_empty") { (c.detail) } }
                            }
                        } }
                    }
                }))
                (step("step-overlap", 4, "Check the overlap", overlap_ok, &html! {
                    p { "Every message collected over POP3 after the first SMTP arrival must also have come over SMTP "
                        "(older backlog excepted): otherwise the journal rule may still deliver into the mailbox." }
                    @for v in &verdict.collectors {
                        @for c in v.checks.iter().filter(|c| c.name == "overlap") {
                            p { strong { (v.name) } ": " (c.detail) }
                            dl.small {
                                dt { "Collected over POP3 after the first SMTP arrival" } dd { (num(figure(c, "pop3_archived_after_first_smtp"))) }
                                dt { "… of which also received over SMTP" } dd { (num(figure(c, "also_received_over_smtp"))) }
                                dt { "POP3 only, pre-cutover backlog" } dd { (num(figure(c, "pop3_only_backlog"))) }
                                dt { "POP3 only, after the cutover" } dd { (num(figure(c, "pop3_only_after_cutover"))) }
                            }
                        }
                    }
                }))
                (step("step-retire", 5, "Retire the POP3 collector", live.is_empty() && !verdict.collectors.is_empty(), &html! {
                    @for v in &verdict.collectors {
                        div.verdict id={ "verdict-" (v.name) } {
                            h3 { (v.name) " " @if v.retired { span.badge.muted { "retired" } }
                                @else if v.safe_to_retire { span.badge.good { "safe to retire" } }
                                @else { span.badge.bad { "not safe to retire" } } }
                            @if !v.retired {
                                @if v.safe_to_retire {
                                    a.button href={ "/collectors/" (v.name) "/retire" } id={ "retire-" (v.name) } { "Retire " (v.name) "…" }
                                } @else {
                                    (reasons_list(v, &format!("reasons-{}", v.name)))
                                }
                            }
                        }
                    }
                    @if verdict.collectors.is_empty() { p.muted { "No POP3 collector is configured." } }
                    p.muted { "Then delete the POP3 journal mailbox's connector in Exchange." }
                }))
            }
        }
    };
    page(
        "Migration",
        Nav::Migration,
        Some(&csrf),
        flash.as_ref(),
        &body,
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct IdQuery {
    id: Option<String>,
}

/// `GET /messages?id=<Message-ID>`.
pub(super) async fn message(
    State(state): State<AppState>,
    authed: Authed,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Response {
    let id = q.ok().and_then(|Query(q)| q.id).unwrap_or_default();
    let found = if id.trim().is_empty() {
        Ok(None)
    } else {
        let (archive, id) = (state.ctx.archive.clone(), id.clone());
        blocking(move || Ok(views::find_message(archive.index(), &id)?)).await
    };
    let found = match found {
        Ok(f) => f.map(|(key, rec)| MessageView::new(key, rec)),
        Err(e) => return error_page(&authed, &e),
    };
    let status = if found.is_none() && !id.trim().is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let body = html! {
        h1 { "Archived message" }
        form.search method="get" action="/messages" {
            label for="id" { "Message-ID" }
            div.row {
                input #id type="text" name="id" value=(id) placeholder="<id@example.com>";
                button type="submit" { "Look up" }
            }
        }
        @if let Some(m) = &found {
            @let r = &m.record;
            @if m.ndr_unrecoverable {
                p.flash.err #ndr-unrecoverable role="alert" {
                    strong { "Undeliverable journal report, not recovered." }
                    " This is a non-delivery report that returned only the journal report's headers: "
                    "the original is not in the archive. Fetch it from Exchange (see the NDR's headers below, "
                    "and docs/operations.md, Undeliverable journal reports)."
                }
            }
            section.card #message {
                h2 { (r.subject.as_deref().unwrap_or("(no subject)")) }
                dl {
                    dt { "Archive key" } dd.wrap { code { (m.key) } }
                    dt { "From" } dd { (r.from.as_deref().unwrap_or("—")) }
                    dt { "Date" } dd { (r.date.as_deref().unwrap_or("—")) }
                    dt { "Envelope sender" } dd #sender { (r.sender.as_deref().unwrap_or("—")) }
                    dt { "Envelope recipients" }
                    dd #recipients { ul.plain { @for rc in &r.recipients { li {
                        code { (rc.address) } " " span.muted { (format!("{:?}", rc.kind)) }
                        @if let Some(e) = &rc.expanded { span.muted { " · expanded from " (e) } }
                        @if let Some(f) = &rc.forwarded { span.muted { " · forwarded from " (f) } }
                    } } } }
                    dt { "Size" } dd { (bytes(r.size)) }
                    dt { "SHA-256" } dd.wrap { code { (r.sha256) } }
                    dt { "Variant" } dd { (if r.variant { "yes: another message had this Message-ID first" } else { "no" }) }
                    dt { "Duplicates" } dd { (num(r.duplicates)) }
                }
                p { a.button #download href={ "/messages/raw?id=" (urlencode(&m.key)) } download { "Download .eml" } }
            }
            section.card {
                h2 { "Sightings" }
                div.scroll { table #sightings {
                    thead { tr { th { "Path" } th { "When" } th { "Envelope" } th { "UIDL" } th { "Sender" } th { "NDR" } } }
                    tbody { @for s in &r.sightings { tr {
                        td { (s.source.to_string()) }
                        td { (time(Some(s.at_ms))) }
                        td { @if let Some(f) = &s.mail_from { "from " code { (f) } } @if !s.rcpt_to.is_empty() { " to " (s.rcpt_to.join(", ")) } }
                        td { (s.uidl.as_deref().unwrap_or("—")) }
                        td.provenance { @if let Some(p) = &s.provenance {
                            code { (p.peer) }
                            @if let Some(t) = &p.tls { span.muted { " · " (t.version) " " (t.cipher) } } @else { span.muted { " · no TLS" } }
                            @if let Some(u) = &p.auth { " · AUTH " code { (u) } }
                            @if let Some(c) = &p.client_cert {
                                " · certificate " (c.subject) " " span.muted { (c.sha256) }
                                @if !c.accepted { " (not accepted)" }
                            }
                        } @else { "—" } }
                        td { @match &s.ndr {
                            None => "—",
                            Some(n) => {
                                (if n.unrecoverable() { "headers only (not recovered)" } else { "recovered from NDR" })
                                @if let Some(d) = &n.diagnostic_code { br; span.muted { (d) } }
                            }
                        } }
                    } } }
                } }
            }
        } @else if !id.trim().is_empty() {
            p.flash.err #not-found { "No archived message has the Message-ID " code { (id) } "." }
        }
    };
    (
        status,
        page("Message", Nav::Messages, Some(authed.csrf()), None, &body),
    )
        .into_response()
}

/// `GET /messages/raw?id=`: the stored `.eml`.
pub(super) async fn message_raw(
    State(state): State<AppState>,
    authed: Authed,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Response {
    let id = q.ok().and_then(|Query(q)| q.id).unwrap_or_default();
    let archive = state.ctx.archive.clone();
    let result = blocking(move || {
        let Some((key, rec)) = views::find_message(archive.index(), &id)? else {
            return Err(ApiError::not_found(format!("no archived message {id:?}")));
        };
        let bytes = archive.store().read(&rec.file)?;
        Ok((key, bytes))
    })
    .await;
    match result {
        Ok((_, bytes)) => (
            [
                (header::CONTENT_TYPE, "message/rfc822"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"message.eml\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => error_page(&authed, &e),
    }
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn urlencode_escapes_reserved() {
        assert_eq!(super::urlencode("a b@c.d/<x>"), "a%20b%40c.d%2F%3Cx%3E");
    }
}
