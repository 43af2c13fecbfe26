//! The POP3 -> SMTP cutover verdict: may a POP3 collector be retired without losing mail?
//!
//! The runbook (docs/migration.md) follows Exchange's procedure: stop transport, point the
//! journal rule at the gateway's SMTP address, restart transport, confirm SMTP journaling, and
//! only then drop the POP3 collector, once its mailbox is empty. For each collector this module
//! checks, from plain figures gathered by the admin API:
//!
//! - **(a) `smtp_traffic`**: journal reports have arrived over SMTP (the cutover happened). The
//!   figures list the first arrival per accepted address or domain.
//! - **(b) `queue_empty`**: the mailbox was empty at the last two polls made after the first SMTP
//!   arrival, and the last one is recent (within two poll intervals). Polls made before the
//!   cutover prove nothing about it, so they do not count.
//! - **(c) `overlap`**: every message the collectors archived after the first SMTP arrival was
//!   also received over SMTP, or none arrived. Messages collected only over POP3 that were
//!   journaled (by more than [`BACKLOG_MARGIN_MS`]) before the first SMTP arrival are the
//!   pre-cutover backlog being drained: they are archived, counted and shown, but do not fail
//!   the check. Anything else (journaled later, or without a usable date) means the journal rule
//!   may still deliver into the mailbox. "Journaled" is the journal report's own Date, which
//!   Exchange writes when it journals; the original's Date comes from the sender's client, whose
//!   clock may be off, and a message can sit in a queue for days before it is journaled. Records
//!   written before the gateway kept the report's Date fall back to the original's.
//!
//! A collector is *safe to retire* only when all three hold. Everything here is a pure function
//! over [`MigrationInput`], so every branch is unit-tested without a server.

use serde::{Deserialize, Serialize};

use crate::archive::{FactRecorder, Recorded};
use crate::config::CollectorConfig;
use crate::index::{CollectorStore, Facts, Index, IndexError, Source};

/// How long before the first SMTP arrival a POP3-only message must have been journaled to count as
/// pre-cutover backlog. Dates have second resolution and clocks drift; a message journaled near the
/// cutover is treated as journaled after it (the safe side: the check fails).
pub(crate) const BACKLOG_MARGIN_MS: u64 = 60_000;

/// One recent poll of a collector: when, and how many messages the mailbox held (STAT at the
/// start of the run, i.e. what had accumulated since the previous poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PollView {
    /// When, Unix ms.
    pub at_ms: u64,
    /// Messages in the mailbox.
    pub queue_depth: u64,
}

/// What the verdict needs to know about one collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CollectorView {
    /// The collector's name.
    pub name: String,
    /// Polls on schedule (configuration, or the operator's override).
    pub active: bool,
    /// Retired already.
    pub retired: bool,
    /// Time between polls, in milliseconds.
    pub interval_ms: u64,
    /// Recent polls, in any order.
    pub polls: Vec<PollView>,
}

/// A message first archived over POP3 after the first SMTP arrival and never received over SMTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct UnmatchedView {
    /// Its archive key.
    pub key: String,
    /// The collector that archived it (None when the record does not say).
    pub collector: Option<String>,
    /// When Exchange journaled it (the journal report's Date, else the original's), Unix ms.
    pub journaled_ms: Option<u64>,
}

/// SMTP traffic as the archive saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct SmtpView {
    /// The first SMTP arrival, Unix ms.
    pub first_ms: Option<u64>,
    /// The latest SMTP arrival, Unix ms.
    pub last_ms: Option<u64>,
    /// First arrival per envelope recipient (lower-cased).
    pub first_by_address: Vec<(String, u64)>,
    /// The configured journal addresses and `@domain`s.
    pub accepted: Vec<String>,
}

/// Everything the verdict is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MigrationInput {
    /// The time the verdict is computed for, Unix ms.
    pub now_ms: u64,
    /// SMTP traffic so far.
    pub smtp: SmtpView,
    /// Messages first archived over POP3 after the first SMTP arrival (all collectors).
    pub pop3_after_smtp: u64,
    /// Those of them never received over SMTP.
    pub unmatched: Vec<UnmatchedView>,
    /// Every configured collector.
    pub collectors: Vec<CollectorView>,
}

/// One check of the verdict, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `smtp_traffic`, `queue_empty` or `overlap`.
    pub name: String,
    /// The check passes.
    pub ok: bool,
    /// One sentence an operator can act on.
    pub detail: String,
    /// The numbers the check looked at (JSON, per check).
    pub figures: serde_json::Value,
}

/// The verdict for one collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorVerdict {
    /// The collector's name.
    pub name: String,
    /// It polls on schedule.
    pub active: bool,
    /// Retired already.
    pub retired: bool,
    /// All checks pass: retiring it loses nothing.
    pub safe_to_retire: bool,
    /// Each check with its figures.
    pub checks: Vec<Check>,
}

/// The whole verdict: one entry per collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The time it was computed for, Unix ms.
    pub now_ms: u64,
    /// Every collector that is not retired yet is safe to retire (true when none is left).
    pub cutover_complete_when_retired: bool,
    /// One verdict per collector.
    pub collectors: Vec<CollectorVerdict>,
}

impl Verdict {
    /// The verdict of the collector named `name`.
    #[must_use]
    pub fn collector(&self, name: &str) -> Option<&CollectorVerdict> {
        self.collectors.iter().find(|c| c.name == name)
    }
}

impl CollectorVerdict {
    /// The failing checks' details, for a 409 answer or a log line.
    #[must_use]
    pub fn reasons(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// Computes the verdict for every collector.
#[must_use]
pub(crate) fn verdict(input: &MigrationInput) -> Verdict {
    let collectors: Vec<CollectorVerdict> = input
        .collectors
        .iter()
        .map(|c| collector_verdict(input, c))
        .collect();
    Verdict {
        now_ms: input.now_ms,
        cutover_complete_when_retired: collectors.iter().all(|c| c.retired || c.safe_to_retire),
        collectors,
    }
}

fn collector_verdict(input: &MigrationInput, c: &CollectorView) -> CollectorVerdict {
    let checks = vec![
        smtp_traffic(&input.smtp),
        queue_empty(input.now_ms, input.smtp.first_ms, c),
        overlap(input, c),
    ];
    CollectorVerdict {
        name: c.name.clone(),
        active: c.active,
        retired: c.retired,
        safe_to_retire: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Whether an envelope recipient falls under an `accept` entry (address or `@domain`).
fn matches(entry: &str, address: &str) -> bool {
    let entry = entry.to_ascii_lowercase();
    let address = address.to_ascii_lowercase();
    if entry.starts_with('@') {
        address.ends_with(&entry)
    } else {
        address == entry
    }
}

/// (a) SMTP journal traffic has arrived.
fn smtp_traffic(smtp: &SmtpView) -> Check {
    let per_accepted: Vec<serde_json::Value> = smtp
        .accepted
        .iter()
        .map(|entry| {
            let first = smtp
                .first_by_address
                .iter()
                .filter(|(a, _)| matches(entry, a))
                .map(|(_, at)| *at)
                .min();
            serde_json::json!({ "accepted": entry, "first_arrival_ms": first })
        })
        .collect();
    let silent: Vec<&str> = smtp
        .accepted
        .iter()
        .filter(|entry| !smtp.first_by_address.iter().any(|(a, _)| matches(entry, a)))
        .map(String::as_str)
        .collect();
    let figures = serde_json::json!({
        "first_smtp_ms": smtp.first_ms,
        "last_smtp_ms": smtp.last_ms,
        "per_accepted_address": per_accepted,
        "addresses_without_traffic": silent,
    });
    match smtp.first_ms {
        None => Check {
            name: "smtp_traffic".into(),
            ok: false,
            detail: "no journal report has arrived over SMTP yet: point the journal rule at the \
                     gateway's address and confirm it delivers"
                .into(),
            figures,
        },
        Some(_) => Check {
            name: "smtp_traffic".into(),
            ok: true,
            detail: if silent.is_empty() {
                "journal reports arrive over SMTP".into()
            } else {
                format!(
                    "journal reports arrive over SMTP (no traffic yet for {})",
                    silent.join(", ")
                )
            },
            figures,
        },
    }
}

/// (b) The mailbox was empty at the last two polls after the cutover, the last one recent.
fn queue_empty(now_ms: u64, first_smtp_ms: Option<u64>, c: &CollectorView) -> Check {
    let mut polls = c.polls.clone();
    polls.sort_by_key(|p| p.at_ms);
    let since = first_smtp_ms.unwrap_or(u64::MAX);
    let after: Vec<&PollView> = polls.iter().filter(|p| p.at_ms >= since).collect();
    let last_two: Vec<&PollView> = after.iter().rev().take(2).rev().copied().collect();
    let max_age_ms = c.interval_ms.saturating_mul(2);
    let last = polls.last();
    let figures = serde_json::json!({
        "interval_ms": c.interval_ms,
        "max_age_ms": max_age_ms,
        "last_polls": polls.iter().rev().take(5).collect::<Vec<_>>(),
        "polls_after_first_smtp": after.len(),
        "last_poll_age_ms": last.map(|p| now_ms.saturating_sub(p.at_ms)),
        "queue_depth": last.map(|p| p.queue_depth),
    });
    let fail = |detail: String| Check {
        name: "queue_empty".into(),
        ok: false,
        detail,
        figures: figures.clone(),
    };
    if let Some(p) = last.filter(|p| p.queue_depth > 0) {
        return fail(format!(
            "the mailbox held {} message(s) at the last poll: let the collector drain it",
            p.queue_depth
        ));
    }
    if first_smtp_ms.is_none() {
        return fail("no poll counts before SMTP traffic has begun".into());
    }
    if last_two.len() < 2 {
        return fail(format!(
            "{} poll(s) since the first SMTP arrival; two empty ones are needed{}",
            last_two.len(),
            if c.active {
                ""
            } else {
                " (the collector is inactive: activate it or run a test collection)"
            }
        ));
    }
    if let Some(p) = last_two.iter().find(|p| p.queue_depth > 0) {
        return fail(format!(
            "the mailbox held {} message(s) at a recent poll: wait for another empty poll",
            p.queue_depth
        ));
    }
    let age = now_ms.saturating_sub(last_two[1].at_ms);
    if age > max_age_ms {
        return fail(format!(
            "the last poll is {}s old, more than two intervals ({}s): is the collector running?",
            age / 1000,
            max_age_ms / 1000
        ));
    }
    Check {
        name: "queue_empty".into(),
        ok: true,
        detail: "the mailbox was empty at the last two polls after the first SMTP arrival".into(),
        figures,
    }
}

/// (c) Every message collected after the cutover was also received over SMTP (backlog aside).
fn overlap(input: &MigrationInput, c: &CollectorView) -> Check {
    let mine: Vec<&UnmatchedView> = input
        .unmatched
        .iter()
        .filter(|u| u.collector.as_deref().is_none_or(|n| n == c.name))
        .collect();
    let first_smtp = input.smtp.first_ms.unwrap_or(u64::MAX);
    let (backlog, late): (Vec<&UnmatchedView>, Vec<&UnmatchedView>) = mine.iter().partition(|u| {
        u.journaled_ms
            .is_some_and(|d| d.saturating_add(BACKLOG_MARGIN_MS) < first_smtp)
    });
    let figures = serde_json::json!({
        "pop3_archived_after_first_smtp": input.pop3_after_smtp,
        "also_received_over_smtp": input.pop3_after_smtp.saturating_sub(input.unmatched.len() as u64),
        "pop3_only": mine.len(),
        "pop3_only_backlog": backlog.len(),
        "pop3_only_after_cutover": late.len(),
        "examples": late.iter().take(10).map(|u| u.key.as_str()).collect::<Vec<_>>(),
    });
    if !late.is_empty() {
        return Check {
            name: "overlap".into(),
            ok: false,
            detail: format!(
                "{} message(s) journaled after the first SMTP arrival (or undated) were collected \
                 over POP3 only: the journal rule may still deliver into the mailbox",
                late.len()
            ),
            figures,
        };
    }
    let detail = match (input.pop3_after_smtp, backlog.len()) {
        (0, _) => "no message was collected over POP3 after the first SMTP arrival".to_string(),
        (n, 0) => {
            format!("all {n} message(s) collected after the first SMTP arrival also came over SMTP")
        }
        (n, b) => format!(
            "of {n} message(s) collected after the first SMTP arrival, {b} are pre-cutover backlog \
             (journaled before it) and the rest also came over SMTP"
        ),
    };
    Check {
        name: "overlap".into(),
        ok: true,
        detail,
        figures,
    }
}

/// The facts the verdict needs, recorded with every arrival in the archive's transaction:
/// the first and last SMTP arrival (and the first per journal address), and which originals
/// were first archived over POP3 after SMTP traffic began without (yet) arriving over SMTP.
pub(crate) struct CutoverFacts;

impl FactRecorder for CutoverFacts {
    fn record(&self, facts: &mut Facts<'_, '_>, a: &Recorded<'_>) -> Result<(), IndexError> {
        match &a.sighting.source {
            Source::Smtp => {
                facts.smtp_arrival(a.sighting.at_ms, &a.sighting.rcpt_to);
                if a.previous.is_some_and(|p| !p.seen_over_smtp()) {
                    facts.seen_over_smtp(a.key)?;
                }
            }
            Source::Pop3 { .. } => {
                if a.previous.is_none() && facts.smtp_started()? {
                    facts.pop3_after_smtp(a.key, a.sighting.at_ms)?;
                }
            }
        }
        Ok(())
    }
}

/// The messages collected over POP3 only after the first SMTP arrival, with collector and date.
pub(crate) fn unmatched_after_smtp(index: &Index) -> Result<Vec<UnmatchedView>, IndexError> {
    let keys = index.pop3_only_keys()?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(rec) = index.get(&key)? else {
            continue;
        };
        let collector = rec
            .first_source()
            .and_then(Source::collector)
            .map(str::to_string);
        out.push(UnmatchedView {
            key,
            collector,
            journaled_ms: rec.journaled_or_dated_ms().map(|t| t.0),
        });
    }
    Ok(out)
}

/// How many recent runs are looked at for the last polls.
const RUNS_FOR_POLLS: usize = 20;

/// Gathers everything the cutover verdict needs from the index (totals, facts, the
/// collectors' state and history), the configured collectors and the accepted journal
/// addresses. Blocking index reads.
pub(crate) fn gather_input<'a>(
    index: &Index,
    store: &CollectorStore,
    collectors: impl IntoIterator<Item = &'a CollectorConfig>,
    accepted: &[String],
) -> Result<MigrationInput, IndexError> {
    let totals = index.stats()?;
    let mut views = Vec::new();
    for c in collectors {
        let state = store.state(c.name())?;
        views.push(collector_view(
            c,
            &state,
            store.runs(c.name(), RUNS_FOR_POLLS)?,
        ));
    }
    Ok(MigrationInput {
        now_ms: crate::clock::UnixMs::now().0,
        smtp: SmtpView {
            first_ms: totals.first_smtp_ms.map(|t| t.0),
            last_ms: totals.last_smtp_ms.map(|t| t.0),
            first_by_address: totals
                .first_smtp_by_address
                .iter()
                .map(|(a, t)| (a.clone(), t.0))
                .collect(),
            accepted: accepted.to_vec(),
        },
        pop3_after_smtp: totals.pop3_after_smtp,
        unmatched: unmatched_after_smtp(index)?,
        collectors: views,
    })
}

/// What the verdict reads of one collector: its state and its recent runs' polls.
fn collector_view(
    c: &CollectorConfig,
    state: &crate::index::CollectorState,
    runs: Vec<crate::index::Run>,
) -> CollectorView {
    // A poll is a run's first STAT: what accumulated in the mailbox since the previous run.
    let polls = runs
        .into_iter()
        .filter_map(|r| {
            Some(PollView {
                at_ms: r.started_ms.0,
                queue_depth: r.on_server?,
            })
        })
        .collect();
    CollectorView {
        name: c.name().to_string(),
        active: state.active(c.active),
        retired: state.retired,
        interval_ms: u64::try_from(c.interval.as_millis()).unwrap_or(u64::MAX),
        polls,
    }
}

/// [`gather_input`] on a node of a shared archive: the totals, facts, state and history are
/// read in PostgreSQL (archive-wide, whichever node recorded them), so every node answers the
/// same verdict.
pub(crate) async fn gather_input_shared(
    index: &crate::index::pg::PgIndex,
    store: &CollectorStore,
    collectors: &[CollectorConfig],
    accepted: &[String],
) -> Result<MigrationInput, IndexError> {
    let facts = index.cutover_facts().await?;
    let mut views = Vec::new();
    for c in collectors {
        let state = store.fetch_state(c.name()).await?;
        let runs = store.fetch_runs(c.name(), RUNS_FOR_POLLS).await?;
        views.push(collector_view(c, &state, runs));
    }
    let unmatched = facts
        .pop3_only
        .iter()
        .map(|(key, rec)| UnmatchedView {
            key: key.clone(),
            collector: rec
                .first_source()
                .and_then(Source::collector)
                .map(str::to_string),
            journaled_ms: rec.journaled_or_dated_ms().map(|t| t.0),
        })
        .collect();
    Ok(MigrationInput {
        now_ms: crate::clock::UnixMs::now().0,
        smtp: SmtpView {
            first_ms: facts.first_smtp_ms.map(|t| t.0),
            last_ms: facts.last_smtp_ms.map(|t| t.0),
            first_by_address: facts
                .first_smtp_by_address
                .iter()
                .map(|(a, t)| (a.clone(), t.0))
                .collect(),
            accepted: accepted.to_vec(),
        },
        pop3_after_smtp: facts.pop3_after_smtp,
        unmatched,
        collectors: views,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const T0: u64 = 1_700_000_000_000;

    fn collector(polls: &[(u64, u64)]) -> CollectorView {
        CollectorView {
            name: "exch".into(),
            active: true,
            retired: false,
            interval_ms: 5 * MIN,
            polls: polls
                .iter()
                .map(|&(at_ms, queue_depth)| PollView { at_ms, queue_depth })
                .collect(),
        }
    }

    /// SMTP began at T0; the collector polled empty at T0+5m and T0+10m; now is T0+12m.
    fn safe_input() -> MigrationInput {
        MigrationInput {
            now_ms: T0 + 12 * MIN,
            smtp: SmtpView {
                first_ms: Some(T0),
                last_ms: Some(T0 + 11 * MIN),
                first_by_address: vec![("journal@gw.example".into(), T0)],
                accepted: vec!["journal@gw.example".into()],
            },
            pop3_after_smtp: 0,
            unmatched: vec![],
            collectors: vec![collector(&[
                (T0 - 5 * MIN, 40),
                (T0 + 5 * MIN, 0),
                (T0 + 10 * MIN, 0),
            ])],
        }
    }

    fn check<'a>(v: &'a Verdict, name: &str) -> &'a Check {
        v.collectors[0]
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn all_checks_pass_is_safe() {
        let v = verdict(&safe_input());
        assert!(v.collectors[0].safe_to_retire, "{v:#?}");
        assert!(v.cutover_complete_when_retired);
        assert!(v.collectors[0].reasons().is_empty());
        assert_eq!(v.collectors[0].checks.len(), 3);
        assert_eq!(
            check(&v, "queue_empty").figures["polls_after_first_smtp"],
            2
        );
    }

    #[test]
    fn no_smtp_traffic_fails_a_and_b() {
        let mut input = safe_input();
        input.smtp = SmtpView {
            accepted: vec!["journal@gw.example".into()],
            ..Default::default()
        };
        let v = verdict(&input);
        assert!(!v.collectors[0].safe_to_retire);
        assert!(!check(&v, "smtp_traffic").ok);
        assert!(!check(&v, "queue_empty").ok);
        assert!(check(&v, "queue_empty").detail.contains("before SMTP"));
        let reasons = v.collectors[0].reasons();
        assert!(reasons[0].starts_with("smtp_traffic:"), "{reasons:?}");
        assert_eq!(
            check(&v, "smtp_traffic").figures["addresses_without_traffic"][0],
            "journal@gw.example"
        );
    }

    #[test]
    fn per_address_figures_match_addresses_and_domains() {
        let mut input = safe_input();
        input.smtp.accepted = vec![
            "JOURNAL@gw.example".into(),
            "@other.example".into(),
            "unused@gw.example".into(),
        ];
        input.smtp.first_by_address = vec![
            ("journal@gw.example".into(), T0 + 3),
            ("a@other.example".into(), T0 + 9),
            ("b@other.example".into(), T0 + 7),
        ];
        let v = verdict(&input);
        let c = check(&v, "smtp_traffic");
        assert!(c.ok);
        let per = &c.figures["per_accepted_address"];
        assert_eq!(per[0]["first_arrival_ms"], T0 + 3);
        assert_eq!(per[1]["first_arrival_ms"], T0 + 7);
        assert!(per[2]["first_arrival_ms"].is_null());
        assert!(c.detail.contains("unused@gw.example"), "{}", c.detail);
    }

    #[test]
    fn non_empty_last_poll_fails_b() {
        let mut input = safe_input();
        input.collectors[0].polls.push(PollView {
            at_ms: T0 + 11 * MIN,
            queue_depth: 3,
        });
        let v = verdict(&input);
        let c = check(&v, "queue_empty");
        assert!(!c.ok && c.detail.contains("3 message"), "{}", c.detail);
        assert_eq!(c.figures["queue_depth"], 3);
    }

    #[test]
    fn one_empty_poll_is_not_enough_and_non_empty_previous_fails() {
        let mut input = safe_input();
        input.collectors[0].polls = vec![
            PollView {
                at_ms: T0 + 5 * MIN,
                queue_depth: 2,
            },
            PollView {
                at_ms: T0 + 10 * MIN,
                queue_depth: 0,
            },
        ];
        let v = verdict(&input);
        assert!(check(&v, "queue_empty").detail.contains("recent poll"));
        assert!(!v.collectors[0].safe_to_retire);

        input.collectors[0].polls = vec![PollView {
            at_ms: T0 + 10 * MIN,
            queue_depth: 0,
        }];
        let v = verdict(&input);
        let c = check(&v, "queue_empty");
        assert!(!c.ok && c.detail.contains("1 poll(s)"), "{}", c.detail);
    }

    #[test]
    fn empty_polls_before_the_cutover_do_not_count() {
        let mut input = safe_input();
        input.collectors[0].polls = vec![
            PollView {
                at_ms: T0 - 10 * MIN,
                queue_depth: 0,
            },
            PollView {
                at_ms: T0 - 5 * MIN,
                queue_depth: 0,
            },
            PollView {
                at_ms: T0 + 5 * MIN,
                queue_depth: 0,
            },
        ];
        let v = verdict(&input);
        assert!(!check(&v, "queue_empty").ok);
        assert_eq!(
            check(&v, "queue_empty").figures["polls_after_first_smtp"],
            1
        );
    }

    #[test]
    fn stale_last_poll_fails_b() {
        let mut input = safe_input();
        input.now_ms = T0 + 10 * MIN + 10 * MIN + 1;
        let v = verdict(&input);
        let c = check(&v, "queue_empty");
        assert!(!c.ok && c.detail.contains("old"), "{}", c.detail);
        // Exactly two intervals is still recent.
        input.now_ms = T0 + 20 * MIN;
        assert!(check(&verdict(&input), "queue_empty").ok);
    }

    #[test]
    fn inactive_collector_without_polls_says_how_to_get_them() {
        let mut input = safe_input();
        input.collectors[0].active = false;
        input.collectors[0].polls.clear();
        let v = verdict(&input);
        let c = check(&v, "queue_empty");
        assert!(!c.ok && c.detail.contains("inactive"), "{}", c.detail);
        assert!(c.figures["last_poll_age_ms"].is_null());
    }

    #[test]
    fn pop3_messages_also_seen_over_smtp_pass_c() {
        let mut input = safe_input();
        input.pop3_after_smtp = 12;
        let v = verdict(&input);
        let c = check(&v, "overlap");
        assert!(c.ok && c.detail.contains("all 12"), "{}", c.detail);
        assert_eq!(c.figures["also_received_over_smtp"], 12);
    }

    #[test]
    fn pop3_only_after_cutover_fails_c_and_lists_keys() {
        let mut input = safe_input();
        input.pop3_after_smtp = 5;
        input.unmatched = vec![
            UnmatchedView {
                key: "late@x".into(),
                collector: Some("exch".into()),
                journaled_ms: Some(T0 + MIN),
            },
            UnmatchedView {
                key: "undated@x".into(),
                collector: Some("exch".into()),
                journaled_ms: None,
            },
        ];
        let v = verdict(&input);
        let c = check(&v, "overlap");
        assert!(!c.ok && c.detail.starts_with("2 message"), "{}", c.detail);
        assert_eq!(c.figures["examples"][0], "late@x");
        assert_eq!(c.figures["also_received_over_smtp"], 3);
        assert!(!v.collectors[0].safe_to_retire);
        assert!(!v.cutover_complete_when_retired);
    }

    #[test]
    fn backlog_collected_after_the_cutover_passes_c() {
        let mut input = safe_input();
        input.pop3_after_smtp = 4;
        input.unmatched = vec![UnmatchedView {
            key: "old@x".into(),
            collector: Some("exch".into()),
            journaled_ms: Some(T0 - 60 * MIN),
        }];
        let v = verdict(&input);
        let c = check(&v, "overlap");
        assert!(
            c.ok && c.detail.contains("1 are pre-cutover backlog"),
            "{}",
            c.detail
        );
        assert_eq!(c.figures["pop3_only_backlog"], 1);
    }

    #[test]
    fn dated_within_the_margin_of_the_cutover_is_not_backlog() {
        let mut input = safe_input();
        input.pop3_after_smtp = 1;
        input.unmatched = vec![UnmatchedView {
            key: "edge@x".into(),
            collector: Some("exch".into()),
            journaled_ms: Some(T0 - BACKLOG_MARGIN_MS),
        }];
        assert!(!check(&verdict(&input), "overlap").ok);
        input.unmatched[0].journaled_ms = Some(T0 - BACKLOG_MARGIN_MS - 1);
        assert!(check(&verdict(&input), "overlap").ok);
    }

    #[test]
    fn unmatched_of_another_collector_does_not_count() {
        let mut input = safe_input();
        input.pop3_after_smtp = 1;
        input.unmatched = vec![UnmatchedView {
            key: "k".into(),
            collector: Some("other".into()),
            journaled_ms: None,
        }];
        assert!(check(&verdict(&input), "overlap").ok);
        // Unattributed ones count against every collector.
        input.unmatched[0].collector = None;
        assert!(!check(&verdict(&input), "overlap").ok);
    }

    #[test]
    fn retired_collectors_do_not_block_completion() {
        let mut input = safe_input();
        let mut other = collector(&[]);
        other.name = "old".into();
        other.retired = true;
        other.active = false;
        input.collectors.push(other);
        let v = verdict(&input);
        assert!(!v.collector("old").unwrap().safe_to_retire);
        assert!(v.cutover_complete_when_retired);
        assert!(v.collector("missing").is_none());
    }

    /// The facts recorded with each arrival, through the real archive: SMTP traffic, a message
    /// first collected over POP3 after it, and that message arriving over SMTP later.
    #[tokio::test]
    async fn cutover_facts_are_recorded_with_the_arrivals() {
        use crate::ingest::{Delivery, Ingest};
        let dir = tempfile::tempdir().unwrap();
        let archive =
            std::sync::Arc::new(crate::archive::Archive::open(dir.path()).expect("archive"));
        let ingest = Ingest::new(archive.clone(), crate::metrics::Metrics::new());
        let message = |id: &str| {
            format!("Message-ID: <{id}>\r\nFrom: a@x.example\r\nSubject: {id}\r\n\r\nbody\r\n")
                .into_bytes()
        };
        let smtp = || Delivery::smtp(String::new(), vec!["Journal@GW.example".into()]);
        // Collected before any SMTP traffic: not a migration fact.
        ingest
            .ingest_bytes(
                Delivery::pop3("exch", Some("u0".into())),
                &message("early@x"),
            )
            .await
            .unwrap();
        ingest
            .ingest_bytes(smtp(), &message("one@x"))
            .await
            .unwrap();
        ingest
            .ingest_bytes(
                Delivery::pop3("exch", Some("u1".into())),
                &message("late@x"),
            )
            .await
            .unwrap();
        let stats = archive.stats().unwrap();
        assert!(stats.first_smtp_ms.is_some() && stats.last_smtp_ms.is_some());
        assert_eq!(stats.first_smtp_by_address.len(), 1);
        assert_eq!(stats.first_smtp_by_address[0].0, "journal@gw.example");
        assert_eq!((stats.pop3_after_smtp, stats.pop3_only_after_smtp), (1, 1));
        let unmatched = unmatched_after_smtp(archive.index()).unwrap();
        assert_eq!(unmatched.len(), 1);
        assert_eq!(
            (unmatched[0].key.as_str(), unmatched[0].collector.as_deref()),
            ("late@x", Some("exch"))
        );
        // The same message over SMTP: no longer POP3-only; still counted as collected after.
        ingest
            .ingest_bytes(smtp(), &message("late@x"))
            .await
            .unwrap();
        let stats = archive.stats().unwrap();
        assert_eq!((stats.pop3_after_smtp, stats.pop3_only_after_smtp), (1, 0));
        ingest.close().await;
    }

    #[test]
    fn no_collectors_is_complete() {
        let mut input = safe_input();
        input.collectors.clear();
        assert!(verdict(&input).cutover_complete_when_retired);
    }
}
