//! The windowed parser: a journal report of any size, read through a fixed-size window.
//!
//! It reads the top-level headers (at most [`HEADER_LIMIT`] bytes), then walks the MIME
//! structure line by line, recognising the boundary lines of every open multipart (nested ones
//! too, not inside the embedded original), and streams:
//! - the envelope part (the first text part) through its transfer decoding (7bit/8bit,
//!   quoted-printable, base64), its charset and, for `text/html`, [`HtmlLines`], into the
//!   incremental [`EnvelopeParser`];
//! - the original (the first `message/rfc822` part, wherever it starts) into a SHA-256 (its
//!   bytes as they stand when not transfer-encoded, else decoded, as the in-memory path does)
//!   while its first [`HEADER_LIMIT`] bytes are kept to read its headers.
//!
//! The report is assembled by the same code as the in-memory path ([`report_from_parts`]).
//!
//! It stops reading as soon as nothing further can change the report: the envelope part is
//! complete (it came first), the original's header section is complete and the key is a
//! Message-ID ([`keyed_by_message_id`]), so neither the original's hash nor anything after it
//! is needed. Without a usable Message-ID it reads on to hash the whole original, as before.

use std::borrow::Cow;
use std::io;

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{Message, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

use super::envelope::{EnvelopeParser, HtmlLines, ParsedEnvelope};
use super::input::Input;
use super::{
    detect_format, keyed_by_message_id, plain_report, plain_top, report_from_parts, Format,
    Headers, KeySource, Report,
};

/// The most bytes of one header section (the top-level one, a part's, the original's) that
/// are read; the rest of a longer section is not (with a warning).
pub const HEADER_LIMIT: usize = 64 * 1024;

/// The smallest window the windowed parser uses (a boundary line must fit in it).
pub const MIN_WINDOW: usize = 256;

type CharsetFnc = fn(&[u8]) -> String;

/// Parses `input` through a window of `window` bytes (at least [`MIN_WINDOW`]).
pub(super) fn parse(input: &(impl Input + ?Sized), window: usize) -> io::Result<Report> {
    let window = window.max(MIN_WINDOW);
    let size = input.size()?;
    let mut lines = Lines::new(input, size, window);
    let mut warnings = Vec::new();

    let mut head = Vec::new();
    let mut head_cut = false;
    while let Some(line) = lines.next_line()? {
        let blank = !line.cont && is_blank(line.bytes);
        push_capped(&mut head, line.bytes, HEADER_LIMIT, &mut head_cut);
        if blank {
            break;
        }
    }
    if head_cut {
        warnings.push(format!(
            "top-level header section longer than {HEADER_LIMIT} bytes; the rest of it was not read"
        ));
    }
    let whole = || whole_key(input, size, window);
    let parser = MessageParser::new();
    let Some(msg) = parser.parse_headers(&head[..]) else {
        return plain_report(Headers::default(), warnings, whole);
    };
    let format = detect_format(&msg);
    if format == Format::Plain {
        let mut report = plain_top(&msg, whole)?;
        report.warnings.extend(warnings);
        return Ok(report);
    }

    let mut walk = Walk::new(window);
    if let Some(level) = multipart_level(&msg) {
        walk.stack.push(level);
        walk.run(&mut lines)?;
        if lines.at_eof() {
            let tail = tail_bytes(input, size)?;
            walk.end_at_eof(&tail);
        }
    }
    warnings.extend(walk.warnings());
    let Walk {
        envelope, original, ..
    } = walk;
    let content_hash = original.as_ref().and_then(|o| o.hash.clone());
    report_from_parts(
        format,
        &msg,
        envelope,
        original.map(|o| o.headers),
        warnings,
        |source| match (source, content_hash) {
            (KeySource::Original, Some(hash)) => Ok(hash),
            _ => whole(),
        },
    )
}

/// `sha256:<hex>` of all of `input`, read a window at a time.
pub(super) fn whole_key(
    input: &(impl Input + ?Sized),
    size: u64,
    window: usize,
) -> io::Result<String> {
    let mut buf = vec![0u8; window.max(MIN_WINDOW)];
    let mut h = Sha256::new();
    let mut offset = 0;
    while offset < size {
        let want = buf
            .len()
            .min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let n = input.read_at(offset, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The last (up to) three bytes of the input.
fn tail_bytes(input: &(impl Input + ?Sized), size: u64) -> io::Result<Vec<u8>> {
    let start = size.saturating_sub(3);
    let mut buf = vec![0u8; usize::try_from(size - start).unwrap_or(3)]; // at most 3
    let n = input.read_at(start, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

pub(super) fn is_blank(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// Appends `bytes` to `buf` up to `max` bytes in all; sets `cut` when some did not fit.
pub(super) fn push_capped(buf: &mut Vec<u8>, bytes: &[u8], max: usize, cut: &mut bool) {
    let room = max.saturating_sub(buf.len());
    if bytes.len() > room {
        *cut = true;
    }
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// One line (or, for a line longer than the window, one window-sized segment of it).
pub(super) struct Line<'b> {
    pub(super) bytes: &'b [u8],
    /// The segment ends the line with its `\n`.
    pub(super) eol: bool,
    /// The segment continues a line whose start did not fit in the window.
    pub(super) cont: bool,
}

/// Lines of an [`Input`], read a window at a time.
pub(super) struct Lines<'a, I: ?Sized> {
    input: &'a I,
    size: u64,
    buf: Vec<u8>,
    /// Unread data is `buf[start..end]`.
    start: usize,
    end: usize,
    /// Offset in the input of the next byte to read into `buf`.
    read_at: u64,
    /// The last segment was cut (no `\n` in a full window): the next continues its line.
    in_long: bool,
}

impl<'a, I: Input + ?Sized> Lines<'a, I> {
    pub(super) fn new(input: &'a I, size: u64, window: usize) -> Self {
        // An input smaller than the window fits whole: a buffer of its size reads the same
        // lines (no line can be longer than the input) without zeroing a whole window for
        // every small message (`dsn::inspect` runs on each one).
        let len = usize::try_from(size).map_or(window, |size| size.min(window));
        Lines {
            input,
            size,
            buf: vec![0u8; len],
            start: 0,
            end: 0,
            read_at: 0,
            in_long: false,
        }
    }

    fn at_eof(&self) -> bool {
        self.read_at >= self.size && self.start == self.end
    }

    /// The offset in the input of the next line's first byte.
    pub(super) fn offset(&self) -> u64 {
        self.read_at - (self.end - self.start) as u64
    }

    pub(super) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let (from, to, eol) = loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                break (self.start, self.start + nl + 1, true);
            }
            if self.read_at >= self.size {
                if self.start == self.end {
                    return Ok(None);
                }
                break (self.start, self.end, false);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                break (0, self.end, false);
            }
            let left = usize::try_from(self.size - self.read_at).unwrap_or(usize::MAX);
            let want = (self.buf.len() - self.end).min(left);
            let n = self
                .input
                .read_at(self.read_at, &mut self.buf[self.end..self.end + want])?;
            if n == 0 {
                // The input shrank under us: what was read is all there is.
                self.size = self.read_at;
            }
            self.end += n;
            self.read_at += n as u64;
        };
        self.start = to;
        let cont = self.in_long;
        self.in_long = !eol && to == self.buf.len() && from == 0 && self.read_at < self.size;
        Ok(Some(Line {
            bytes: &self.buf[from..to],
            eol,
            cont,
        }))
    }
}

/// One open multipart.
struct Level {
    /// `--` and its boundary.
    marker: Vec<u8>,
    /// `multipart/digest`: parts without a Content-Type are messages.
    digest: bool,
}

fn multipart_level(msg: &Message<'_>) -> Option<Level> {
    let ct = msg.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart") {
        return None;
    }
    let boundary = ct.attribute("boundary")?;
    let mut marker = b"--".to_vec();
    marker.extend_from_slice(boundary.as_bytes());
    Some(Level {
        marker,
        digest: ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("digest")),
    })
}

/// Where a part ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartEnd {
    Boundary,
    /// The input ended inside the part; `cut_off`: in the middle of a line.
    Eof {
        cut_off: bool,
    },
}

enum Phase {
    /// Before the first boundary of a multipart, or after its closing one.
    Between,
    /// A part's header section (bounded).
    Headers {
        buf: Vec<u8>,
        cut: bool,
    },
    Envelope(Box<EnvelopeSink>),
    Original(Box<OriginalSink>),
    /// A part neither of interest nor a multipart.
    Skip,
}

/// The embedded original, once its part ended.
struct FoundOriginal {
    headers: Headers,
    /// `sha256:` of its bytes; None when it was empty.
    hash: Option<String>,
}

struct Walk {
    window: usize,
    stack: Vec<Level>,
    phase: Phase,
    envelope: Option<ParsedEnvelope>,
    original: Option<FoundOriginal>,
    envelope_started: bool,
    original_started: bool,
    cut_lines: usize,
    cut_values: usize,
    cut_headers: usize,
}

impl Walk {
    fn new(window: usize) -> Walk {
        Walk {
            window,
            stack: Vec::new(),
            phase: Phase::Between,
            envelope: None,
            original: None,
            envelope_started: false,
            original_started: false,
            cut_lines: 0,
            cut_values: 0,
            cut_headers: 0,
        }
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.cut_lines > 0 {
            warnings.push(format!(
                "{} envelope line(s) longer than {} bytes cut there",
                self.cut_lines, self.window
            ));
        }
        if self.cut_values > 0 {
            warnings.push(format!(
                "{} envelope field value(s) longer than {} bytes cut there",
                self.cut_values, self.window
            ));
        }
        if self.cut_headers > 0 {
            warnings.push(format!(
                "{} part or original header section(s) longer than {HEADER_LIMIT} bytes; the rest not read",
                self.cut_headers
            ));
        }
        warnings
    }

    fn run<I: Input + ?Sized>(&mut self, lines: &mut Lines<'_, I>) -> io::Result<()> {
        while let Some(line) = lines.next_line()? {
            if !line.cont && line.bytes.starts_with(b"--") {
                if let Some(depth) = self
                    .stack
                    .iter()
                    .rposition(|l| line.bytes.starts_with(&l.marker))
                {
                    let closing = line.bytes[self.stack[depth].marker.len()..].starts_with(b"--");
                    self.end_part(PartEnd::Boundary);
                    self.stack.truncate(depth + 1);
                    if closing {
                        self.stack.pop();
                        self.phase = Phase::Between;
                    } else {
                        self.phase = Phase::Headers {
                            buf: Vec::new(),
                            cut: false,
                        };
                    }
                    if self.stack.is_empty() || self.envelope.is_some() && self.original.is_some() {
                        return Ok(());
                    }
                    continue;
                }
            }
            match &mut self.phase {
                Phase::Between | Phase::Skip => {}
                Phase::Headers { buf, cut } => {
                    let blank = !line.cont && is_blank(line.bytes);
                    push_capped(buf, line.bytes, HEADER_LIMIT, cut);
                    if blank {
                        self.start_part();
                    }
                }
                Phase::Envelope(sink) => sink.push(line.bytes),
                Phase::Original(sink) => {
                    sink.push(line.bytes, line.eol);
                    // The envelope came first and is complete: once the original's headers
                    // give the key a Message-ID, the rest of the input cannot change the report.
                    if let Some(envelope) = &self.envelope {
                        if let Some(headers) = sink.key_headers(envelope) {
                            self.original = Some(FoundOriginal {
                                headers,
                                hash: None,
                            });
                            self.phase = Phase::Skip;
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The input ended (no closing boundary); `tail`: its last bytes.
    fn end_at_eof(&mut self, tail: &[u8]) {
        // A part whose header section the input cut off is no part (as mail-parser sees it).
        let soft_break = tail.ends_with(b"=\r\n") || tail.ends_with(b"=\n");
        // Base64 lines say nothing about the decoded text's lines: a cut-off base64 envelope
        // always ends in the middle of one.
        let cut_off = match &self.phase {
            Phase::Envelope(sink) => match sink.decoder {
                Decoder::Base64(_) => true,
                Decoder::Qp(_) => soft_break || !tail.ends_with(b"\n"),
                Decoder::None => !tail.ends_with(b"\n"),
            },
            _ => !tail.ends_with(b"\n"),
        };
        self.end_part(PartEnd::Eof { cut_off });
    }

    /// A part's header section is complete: what is the part?
    fn start_part(&mut self) {
        let Phase::Headers { buf, cut } = std::mem::replace(&mut self.phase, Phase::Skip) else {
            return;
        };
        self.cut_headers += usize::from(cut);
        let parser = MessageParser::new();
        let msg = parser.parse_headers(&buf[..]);
        if let Some(level) = msg.as_ref().and_then(multipart_level) {
            self.stack.push(level);
            self.phase = Phase::Between;
            return;
        }
        let ct = msg.as_ref().and_then(|m| m.content_type());
        let in_digest = self.stack.last().is_some_and(|l| l.digest);
        let is = |t: &str, s: &str| {
            ct.is_some_and(|c| {
                c.ctype().eq_ignore_ascii_case(t)
                    && c.subtype().is_some_and(|x| x.eq_ignore_ascii_case(s))
            })
        };
        let is_message = match ct {
            Some(_) => is("message", "rfc822") || is("message", "global"),
            None => in_digest,
        };
        let is_text = match ct {
            Some(c) => {
                c.ctype().eq_ignore_ascii_case("text")
                    || c.ctype().eq_ignore_ascii_case("multipart")
            }
            None => !in_digest,
        };
        let decoder = Decoder::of(msg.as_ref().and_then(|m| m.content_transfer_encoding()));
        if is_message && !self.original_started {
            self.original_started = true;
            self.phase = Phase::Original(Box::new(OriginalSink::new(decoder)));
        } else if is_text && !self.envelope_started {
            self.envelope_started = true;
            let charset = ct
                .and_then(|c| c.attribute("charset"))
                .and_then(|c| charset_decoder(c.as_bytes()));
            self.phase = Phase::Envelope(Box::new(EnvelopeSink::new(
                decoder,
                charset,
                is("text", "html"),
                self.window,
            )));
        }
    }

    fn end_part(&mut self, end: PartEnd) {
        match std::mem::replace(&mut self.phase, Phase::Skip) {
            Phase::Envelope(sink) => {
                let cut_off = matches!(end, PartEnd::Eof { cut_off: true });
                self.cut_lines += sink.cut_lines;
                let (parsed, cut_values) = sink.finish(cut_off);
                self.cut_values += cut_values;
                self.envelope = Some(parsed);
            }
            Phase::Original(sink) => {
                let (found, cut) = sink.finish(end == PartEnd::Boundary);
                self.cut_headers += usize::from(cut);
                self.original = Some(found);
            }
            Phase::Headers { .. } | Phase::Between | Phase::Skip => {}
        }
    }
}

/// A part's Content-Transfer-Encoding, decoded incrementally.
pub(super) enum Decoder {
    None,
    Qp(Qp),
    Base64(Base64),
}

impl Decoder {
    pub(super) fn of(cte: Option<&str>) -> Decoder {
        match cte.map(str::trim) {
            Some(c) if c.eq_ignore_ascii_case("base64") => Decoder::Base64(Base64::default()),
            Some(c) if c.eq_ignore_ascii_case("quoted-printable") => Decoder::Qp(Qp::default()),
            _ => Decoder::None,
        }
    }

    /// Decodes `input` (any piece of the part body) onto `out`.
    pub(super) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self {
            Decoder::None => out.extend_from_slice(input),
            Decoder::Qp(qp) => qp.decode(input, out),
            Decoder::Base64(b64) => b64.decode(input, out),
        }
    }
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum QpState {
    #[default]
    Text,
    Eq,
    Hex1(u8),
}

/// Quoted-printable as mail-parser decodes it (soft breaks joined, trailing white space of a
/// line dropped, CRLF line breaks once a CR was seen), but lenient: a malformed `=` sequence
/// is kept as it stands instead of failing the part.
#[derive(Default)]
pub(super) struct Qp {
    state: QpState,
    /// Unencoded white space at the end of `out` (dropped at a hard line break).
    ws: usize,
    crlf: bool,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl Qp {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &ch in input {
            match ch {
                b'\n' => {
                    if self.state == QpState::Eq {
                        self.state = QpState::Text;
                    } else {
                        if let QpState::Hex1(h) = self.state {
                            out.extend_from_slice(&[b'=', h]);
                            self.ws = 0;
                        }
                        self.state = QpState::Text;
                        out.truncate(out.len() - self.ws.min(out.len()));
                        out.extend_from_slice(if self.crlf { b"\r\n" } else { b"\n" });
                    }
                    self.ws = 0;
                }
                b'\r' => self.crlf = true,
                _ => match self.state {
                    QpState::Text if ch == b'=' => self.state = QpState::Eq,
                    QpState::Text => {
                        self.ws = if ch.is_ascii_whitespace() {
                            self.ws + 1
                        } else {
                            0
                        };
                        out.push(ch);
                    }
                    QpState::Eq => {
                        if hex_value(ch).is_some() {
                            self.state = QpState::Hex1(ch);
                        } else if !ch.is_ascii_whitespace() {
                            out.extend_from_slice(&[b'=', ch]);
                            self.ws = 0;
                            self.state = QpState::Text;
                        }
                    }
                    QpState::Hex1(h) => {
                        match (hex_value(h), hex_value(ch)) {
                            (Some(a), Some(b)) => out.push(a << 4 | b),
                            _ => out.extend_from_slice(&[b'=', h, ch]),
                        }
                        self.ws = 0;
                        self.state = QpState::Text;
                    }
                },
            }
        }
    }
}

/// Base64 as mail-parser decodes it: white space and other characters skipped, `=` ends a
/// quantum.
#[derive(Default)]
pub(super) struct Base64 {
    acc: u32,
    n: u8,
}

impl Base64 {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &ch in input {
            let v = match ch {
                b'A'..=b'Z' => ch - b'A',
                b'a'..=b'z' => ch - b'a' + 26,
                b'0'..=b'9' => ch - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => {
                    match self.n {
                        // 12 bits: one byte and 4 padding bits.
                        2 => out.push((self.acc >> 4).to_be_bytes()[3]),
                        // 18 bits: two bytes and 2 padding bits.
                        3 => out.extend_from_slice(&(self.acc >> 2).to_be_bytes()[2..]),
                        _ => {}
                    }
                    self.acc = 0;
                    self.n = 0;
                    continue;
                }
                _ => continue,
            };
            self.acc = self.acc << 6 | u32::from(v);
            self.n += 1;
            if self.n == 4 {
                // 24 bits: three bytes.
                out.extend_from_slice(&self.acc.to_be_bytes()[1..]);
                self.acc = 0;
                self.n = 0;
            }
        }
    }
}

/// The envelope part, decoded and parsed as it streams by.
struct EnvelopeSink {
    decoder: Decoder,
    charset: Option<CharsetFnc>,
    /// The charset maps ASCII to itself: ASCII lines skip it.
    ascii_identity: bool,
    html: Option<HtmlLines>,
    parser: EnvelopeParser,
    /// Decoded bytes of the current line (at most `window`).
    line: Vec<u8>,
    line_cut: bool,
    scratch: Vec<u8>,
    window: usize,
    cut_lines: usize,
}

impl EnvelopeSink {
    fn new(decoder: Decoder, charset: Option<CharsetFnc>, html: bool, window: usize) -> Self {
        EnvelopeSink {
            decoder,
            charset,
            ascii_identity: charset.is_none_or(|decode| {
                let ascii: Vec<u8> = (1..0x80).collect();
                decode(&ascii).as_bytes() == ascii
            }),
            html: html.then(|| HtmlLines::new(window)),
            parser: EnvelopeParser::new(window),
            line: Vec::new(),
            line_cut: false,
            scratch: Vec::new(),
            window,
            cut_lines: 0,
        }
    }

    fn push(&mut self, raw: &[u8]) {
        let mut decoded = std::mem::take(&mut self.scratch);
        decoded.clear();
        self.decoder.decode(raw, &mut decoded);
        let mut rest = &decoded[..];
        while !rest.is_empty() {
            let (piece, complete) = match memchr::memchr(b'\n', rest) {
                Some(nl) => (&rest[..nl], Some(nl + 1)),
                None => (rest, None),
            };
            push_capped(&mut self.line, piece, self.window, &mut self.line_cut);
            match complete {
                Some(next) => {
                    self.end_line(true);
                    rest = &rest[next..];
                }
                None => break,
            }
        }
        self.scratch = decoded;
    }

    /// The current line is complete (`newline`: it ended with one).
    fn end_line(&mut self, newline: bool) {
        if self.line_cut {
            self.cut_lines += 1;
        }
        let bytes = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let text = match self.charset {
            Some(decode) if !(self.ascii_identity && bytes.is_ascii()) => Cow::Owned(decode(bytes)),
            _ => String::from_utf8_lossy(bytes),
        };
        match &mut self.html {
            Some(html) => {
                let parser = &mut self.parser;
                html.push(&text, |l| parser.push_line(l));
                if newline {
                    html.push("\n", |l| parser.push_line(l));
                }
            }
            None => self.parser.push_line(&text),
        }
        self.line.clear();
        self.line_cut = false;
    }

    /// The part ended; `cut_off`: the input ended in the middle of its last line, which is
    /// then ignored rather than used half. Returns the envelope and how many values were cut.
    fn finish(mut self, cut_off: bool) -> (ParsedEnvelope, usize) {
        // Cut off: a text line is dropped here, an HTML one after conversion.
        let keep_last = !cut_off || self.html.is_some();
        if keep_last && !self.line.is_empty() {
            self.end_line(false);
        }
        if let Some(html) = self.html.take() {
            if let Some(last) = html.finish() {
                if !cut_off {
                    self.parser.push_line(&last);
                }
            }
        }
        let cut = self.parser.cut_values();
        (self.parser.finish(), cut)
    }
}

/// The embedded original, hashed as it streams by; its first [`HEADER_LIMIT`] bytes kept.
struct OriginalSink {
    decoder: Decoder,
    hash: Sha256,
    len: u64,
    head: Vec<u8>,
    head_cut: bool,
    /// The line break that ended the last line: part of the original only if more follows
    /// before the boundary.
    held: Vec<u8>,
    scratch: Vec<u8>,
    /// How much of `head` was searched for the end of the header section.
    scanned: usize,
    /// [`OriginalSink::key_headers`] gave its answer (the header section is complete, or cut).
    checked: bool,
}

impl OriginalSink {
    fn new(decoder: Decoder) -> Self {
        OriginalSink {
            decoder,
            hash: Sha256::new(),
            len: 0,
            head: Vec::new(),
            head_cut: false,
            held: Vec::new(),
            scratch: Vec::new(),
            scanned: 0,
            checked: false,
        }
    }

    /// The original's headers, once its header section is complete (within the first
    /// [`HEADER_LIMIT`] bytes) and they or `envelope` give the key a Message-ID; None before,
    /// and always None after the first complete answer. The header section ends at the first
    /// blank line, so the headers are those [`OriginalSink::finish`] will read.
    fn key_headers(&mut self, envelope: &ParsedEnvelope) -> Option<Headers> {
        if self.checked {
            return None;
        }
        // A blank line is `\n\n` or `\n\r\n`: search again from two bytes before the last end.
        let from = self.scanned.saturating_sub(2);
        let complete = has_header_end(&self.head[from..]);
        self.scanned = self.head.len();
        if !complete {
            // A header section longer than the kept head: the rest is read as before.
            self.checked = self.head.len() >= HEADER_LIMIT;
            return None;
        }
        self.checked = true;
        let headers = head_headers(&self.head);
        keyed_by_message_id(envelope, &headers).then_some(headers)
    }

    fn push(&mut self, raw: &[u8], eol: bool) {
        let mut decoded = std::mem::take(&mut self.scratch);
        decoded.clear();
        self.decoder.decode(raw, &mut decoded);
        let keep = match (&self.decoder, eol) {
            (Decoder::Base64(_), _) | (_, false) => decoded.len(),
            _ if decoded.ends_with(b"\r\n") => decoded.len() - 2,
            _ if decoded.ends_with(b"\n") => decoded.len() - 1,
            _ => decoded.len(),
        };
        if !decoded.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.consume(&held);
            self.consume(&decoded[..keep]);
            self.held = decoded[keep..].to_vec();
        }
        self.scratch = decoded;
    }

    fn consume(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.hash.update(bytes);
        self.len += bytes.len() as u64;
        if self.head.len() < HEADER_LIMIT {
            push_capped(&mut self.head, bytes, HEADER_LIMIT, &mut self.head_cut);
        }
    }

    /// The part ended (`at_boundary`, else the input ended). Returns the original and whether
    /// its header section was longer than [`HEADER_LIMIT`].
    fn finish(mut self, at_boundary: bool) -> (FoundOriginal, bool) {
        if !at_boundary {
            let held = std::mem::take(&mut self.held);
            self.consume(&held);
        }
        let headers = head_headers(&self.head);
        // Only a cut inside the header section matters (the body may be any size).
        let cut = self.head_cut && !has_header_end(&self.head);
        let hash = (self.len > 0).then(|| format!("sha256:{}", hex::encode(self.hash.finalize())));
        (FoundOriginal { headers, hash }, cut)
    }
}

/// The headers of the original, read from its first bytes.
fn head_headers(head: &[u8]) -> Headers {
    MessageParser::new()
        .parse_headers(head)
        .map(|m| Headers::of(&m))
        .unwrap_or_default()
}

fn has_header_end(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, b"\n\r\n").is_some()
        || memchr::memmem::find(bytes, b"\n\n").is_some()
}
