//! The SMTP the proxy needs to follow, and no more: pure, no I/O.
//!
//! The proxy forwards every byte untouched in both directions. It parses
//! only to know three things: where a client command ends (so that it can
//! match each server reply to its command, pipelining included), where the
//! message body ends (the lone `.` line, so that dot-stuffed lines pass as
//! body), and which reply answers the end of the body (the one it may have
//! to hold). Every buffer is bounded: a line longer than [`MAX_LINE`] or a
//! reply longer than [`MAX_REPLY`] ends the session.

use std::collections::VecDeque;

use thiserror::Error;

/// Longest command or reply line. RFC 5321 allows 512 octets for a command
/// line and 512 for a reply line, more with extensions; Postfix's own
/// `line_length_limit` is 2048. Twice that leaves room for any extension a
/// real before-filter smtpd sends.
pub const MAX_LINE: usize = 4096;
/// Longest multi-line reply (an EHLO answer is the longest seen in
/// practice: a dozen lines).
pub const MAX_REPLY: usize = 64 * 1024;
/// Client bytes the proxy keeps unparsed while it waits for the answer to
/// `DATA` (whether they are body or commands depends on it). A client that
/// follows RFC 2920 sends nothing there; a blind one is bounded by this.
pub const MAX_UNDECIDED: usize = 64 * 1024;

/// What went wrong in one session's byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SmtpError {
    /// A command line longer than [`MAX_LINE`].
    #[error("client command line longer than {MAX_LINE} bytes")]
    CommandTooLong,
    /// A reply line longer than [`MAX_LINE`] or a reply longer than [`MAX_REPLY`].
    #[error("after-filter reply longer than allowed")]
    ReplyTooLong,
    /// A reply line that does not start with three digits.
    #[error("after-filter sent a malformed reply line")]
    BadReply,
    /// The client used BDAT: its chunk boundaries are not followed here,
    /// and a before-filter Postfix smtpd never sends it to a proxy.
    #[error("client used BDAT, which this proxy does not relay")]
    Bdat,
    /// The client sent more than [`MAX_UNDECIDED`] bytes before the answer to DATA.
    #[error("client sent too much before the answer to DATA")]
    Undecided,
}

/// One complete server reply: its code and its raw bytes (every line, CRLF
/// included), forwarded as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub raw: Vec<u8>,
}

impl Reply {
    /// The text of every line after the code and separator.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw)
            .lines()
            .map(|l| l.get(4..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The queue ID of a Postfix `250 ... queued as ID` reply.
    pub fn queued_as(&self) -> Option<String> {
        if !(200..300).contains(&self.code) {
            return None;
        }
        let text = self.text();
        let lower = text.to_ascii_lowercase();
        let at = lower.find("queued as ")? + "queued as ".len();
        let id: String = text[at..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        is_queue_id(&id).then_some(id)
    }
}

/// One definition of what a queue ID looks like, shared with the spool
/// rules: anything else is never looked up, so a reply cannot name a file.
pub use crate::sync::spool::is_queue_id;

/// Assembles server bytes into complete replies (multi-line: `250-` lines
/// up to the `250 ` line).
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to be complete continuation lines.
    scanned: usize,
}

impl ReplyParser {
    /// Feeds bytes; returns the replies they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Reply>, SmtpError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let Some(nl) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() - self.scanned > MAX_LINE {
                    return Err(SmtpError::ReplyTooLong);
                }
                break;
            };
            let end = self.scanned + nl + 1;
            let line = &self.buf[self.scanned..end];
            if line.len() > MAX_LINE {
                return Err(SmtpError::ReplyTooLong);
            }
            let code = reply_code(line).ok_or(SmtpError::BadReply)?;
            let more = line.get(3) == Some(&b'-');
            if let Some(first) = self.buf.get(..3)
                && first != &line[..3]
            {
                // Every line of one reply carries the same code.
                return Err(SmtpError::BadReply);
            }
            self.scanned = end;
            if !more {
                let raw: Vec<u8> = self.buf.drain(..end).collect();
                self.scanned = 0;
                out.push(Reply { code, raw });
            } else if self.scanned > MAX_REPLY {
                return Err(SmtpError::ReplyTooLong);
            }
        }
        Ok(out)
    }
}

fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match line.get(3) {
        Some(b' ' | b'-' | b'\r' | b'\n') => {}
        _ => return None,
    }
    let n = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..600).contains(&n).then_some(n)
}

/// What a client command asks the server for, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `DATA`: a 354 answer starts the body.
    Data,
    /// The lone `.` that ends the body: its answer may be held.
    EndOfData,
    /// Anything else: its answer is forwarded.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientMode {
    /// Command lines.
    Commands,
    /// `DATA` sent, its answer not seen: the next bytes are body or
    /// commands depending on it.
    AwaitingData,
    /// Message body; `at_line_start` and `dot` follow `CRLF . CRLF`.
    Body { at_line_start: bool, dot: u8 },
}

/// Follows the client's byte stream: complete commands in order, and the
/// body between a 354 and the lone dot (dot-stuffed lines stay body).
#[derive(Debug)]
pub struct CommandParser {
    mode: ClientMode,
    /// Unparsed bytes: a partial command line, or what came while
    /// [`ClientMode::AwaitingData`].
    buf: Vec<u8>,
}

impl Default for CommandParser {
    fn default() -> Self {
        Self {
            mode: ClientMode::Commands,
            buf: Vec::new(),
        }
    }
}

impl CommandParser {
    /// Feeds client bytes; returns the commands they completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Command>, SmtpError> {
        self.buf.extend_from_slice(bytes);
        self.parse()
    }

    /// The server answered `DATA` with `code`: the bytes kept meanwhile are
    /// body (354) or commands (anything else). Returns the commands this
    /// completes.
    pub fn data_answered(&mut self, code: u16) -> Result<Vec<Command>, SmtpError> {
        if self.mode != ClientMode::AwaitingData {
            return Ok(Vec::new());
        }
        self.mode = if code == 354 {
            ClientMode::Body {
                at_line_start: true,
                dot: 0,
            }
        } else {
            ClientMode::Commands
        };
        self.parse()
    }

    /// Whether the client is sending a body.
    pub fn in_body(&self) -> bool {
        matches!(self.mode, ClientMode::Body { .. })
    }

    fn parse(&mut self) -> Result<Vec<Command>, SmtpError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.buf.len() {
            match self.mode {
                ClientMode::AwaitingData => {
                    if self.buf.len() - pos > MAX_UNDECIDED {
                        return Err(SmtpError::Undecided);
                    }
                    break;
                }
                ClientMode::Commands => {
                    let Some(nl) = self.buf[pos..].iter().position(|&b| b == b'\n') else {
                        if self.buf.len() - pos > MAX_LINE {
                            return Err(SmtpError::CommandTooLong);
                        }
                        break;
                    };
                    let line = &self.buf[pos..pos + nl + 1];
                    if line.len() > MAX_LINE {
                        return Err(SmtpError::CommandTooLong);
                    }
                    pos += nl + 1;
                    let verb = line
                        .split(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
                        .next()
                        .unwrap_or(&[]);
                    if verb.eq_ignore_ascii_case(b"DATA") {
                        out.push(Command::Data);
                        self.mode = ClientMode::AwaitingData;
                    } else if verb.eq_ignore_ascii_case(b"BDAT") {
                        return Err(SmtpError::Bdat);
                    } else {
                        out.push(Command::Other);
                    }
                }
                ClientMode::Body {
                    mut at_line_start,
                    mut dot,
                } => {
                    // Streaming `CRLF . CRLF` detection; a bare LF ends a
                    // line too, as Postfix's smtpd accepts it.
                    let mut ended = false;
                    while pos < self.buf.len() {
                        let b = self.buf[pos];
                        pos += 1;
                        match (dot, b) {
                            (0, b'.') if at_line_start => dot = 1,
                            (1, b'\r') => dot = 2,
                            (1 | 2, b'\n') => {
                                ended = true;
                                break;
                            }
                            (_, b'\n') => {
                                dot = 0;
                                at_line_start = true;
                                continue;
                            }
                            _ => dot = 0,
                        }
                        at_line_start = false;
                    }
                    if ended {
                        out.push(Command::EndOfData);
                        self.mode = ClientMode::Commands;
                    } else {
                        self.mode = ClientMode::Body { at_line_start, dot };
                    }
                }
            }
        }
        self.buf.drain(..pos);
        Ok(out)
    }
}

/// The commands sent and not yet answered, oldest first.
#[derive(Debug, Default)]
pub struct Pending {
    /// The greeting counts as the answer to the connection itself.
    greeted: bool,
    queue: VecDeque<Command>,
}

/// What a server reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    Greeting,
    Command(Command),
    /// A reply nobody asked for (a 421 before closing, say).
    Unsolicited,
}

impl Pending {
    pub fn push(&mut self, cmds: impl IntoIterator<Item = Command>) {
        self.queue.extend(cmds);
    }

    /// Matches the next reply to what it answers.
    pub fn answer(&mut self) -> Answers {
        if !self.greeted {
            self.greeted = true;
            return Answers::Greeting;
        }
        self.queue
            .pop_front()
            .map_or(Answers::Unsolicited, Answers::Command)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(p: &mut ReplyParser, s: &str) -> Vec<(u16, String)> {
        p.feed(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|r| (r.code, String::from_utf8(r.raw).unwrap()))
            .collect()
    }

    #[test]
    fn multi_line_reply_is_one_reply() {
        let mut p = ReplyParser::default();
        assert!(replies(&mut p, "250-mail.example\r\n250-PIPELINING\r\n").is_empty());
        let r = replies(&mut p, "250 8BITMIME\r\n354 go\r\n");
        assert_eq!(
            r,
            vec![
                (
                    250,
                    "250-mail.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n".into()
                ),
                (354, "354 go\r\n".into())
            ]
        );
    }

    #[test]
    fn reply_split_anywhere_reassembles() {
        let text = "220 hi\r\n250-a\r\n250 b\r\n250 2.0.0 Ok: queued as 4VzqXv1Jc8z2lG\r\n";
        for cut in 0..text.len() {
            let mut p = ReplyParser::default();
            let mut got = p.feed(&text.as_bytes()[..cut]).unwrap();
            got.extend(p.feed(&text.as_bytes()[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[2].queued_as().as_deref(), Some("4VzqXv1Jc8z2lG"));
        }
    }

    #[test]
    fn malformed_and_oversize_replies_are_errors() {
        assert_eq!(
            ReplyParser::default().feed(b"hello\r\n"),
            Err(SmtpError::BadReply)
        );
        assert_eq!(
            ReplyParser::default().feed(b"250-a\r\n354 b\r\n"),
            Err(SmtpError::BadReply)
        );
        let long = vec![b'2'; MAX_LINE + 1];
        assert_eq!(
            ReplyParser::default().feed(&long),
            Err(SmtpError::ReplyTooLong)
        );
        let mut p = ReplyParser::default();
        let line = format!("250-{}\r\n", "x".repeat(1000));
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = p.feed(line.as_bytes()) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SmtpError::ReplyTooLong));
    }

    #[test]
    fn queued_as_only_on_success_and_sane_ids() {
        let r = |s: &str| Reply {
            code: s[..3].parse().unwrap(),
            raw: s.as_bytes().to_vec(),
        };
        assert_eq!(
            r("250 2.0.0 Ok: queued as 3F2A1B\r\n")
                .queued_as()
                .as_deref(),
            Some("3F2A1B")
        );
        assert_eq!(r("451 4.3.0 queued as 3F2A1B\r\n").queued_as(), None);
        assert_eq!(r("250 2.0.0 Ok\r\n").queued_as(), None);
        assert_eq!(r("250 queued as ../../etc\r\n").queued_as(), None);
        assert!(!is_queue_id(&"A".repeat(33)));
        assert!(!is_queue_id("a/b"));
    }

    #[test]
    fn pipelined_commands_and_body_with_dot_stuffing() {
        let mut c = CommandParser::default();
        let cmds = c
            .feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n")
            .unwrap();
        use Command::*;
        assert_eq!(cmds, vec![Other, Other, Other, Data]);
        // Body bytes before the answer to DATA stay undecided.
        assert!(
            c.feed(b"Subject: x\r\n\r\n..not the end\r\n")
                .unwrap()
                .is_empty()
        );
        assert_eq!(c.data_answered(354).unwrap(), vec![]);
        assert!(c.in_body());
        assert!(
            c.feed(b".\r").unwrap().is_empty(),
            "a dot alone is not yet the end"
        );
        assert_eq!(c.feed(b"\nQUIT\r\n").unwrap(), vec![EndOfData, Other]);
    }

    #[test]
    fn refused_data_makes_the_kept_bytes_commands() {
        let mut c = CommandParser::default();
        assert_eq!(c.feed(b"DATA\r\nRSET\r\n").unwrap(), vec![Command::Data]);
        assert_eq!(c.data_answered(554).unwrap(), vec![Command::Other]);
        assert!(!c.in_body());
    }

    #[test]
    fn end_of_body_split_at_every_byte() {
        let body = b"line\r\n.\r\n..\r\nx.\r\n.\r\nNOOP\r\n";
        // Ends at the second lone dot: "..\r\n" is a stuffed dot line.
        for cut in 0..body.len() {
            let mut c = CommandParser::default();
            c.feed(b"DATA\r\n").unwrap();
            c.data_answered(354).unwrap();
            let mut got = c.feed(&body[..cut]).unwrap();
            got.extend(c.feed(&body[cut..]).unwrap());
            // "line\r\n.\r\n" already ends the body; the rest is commands.
            assert_eq!(got.first(), Some(&Command::EndOfData), "cut {cut}");
        }
        let mut c = CommandParser::default();
        c.feed(b"DATA\r\n").unwrap();
        c.data_answered(354).unwrap();
        assert!(c.feed(b"..\r\n.x\r\n x\r\n.").unwrap().is_empty());
        assert_eq!(c.feed(b"\r\n").unwrap(), vec![Command::EndOfData]);
    }

    #[test]
    fn body_is_not_bounded_by_line_length() {
        let mut c = CommandParser::default();
        c.feed(b"DATA\r\n").unwrap();
        c.data_answered(354).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            assert!(c.feed(&chunk).unwrap().is_empty());
        }
        assert_eq!(c.feed(b"\r\n.\r\n").unwrap(), vec![Command::EndOfData]);
    }

    #[test]
    fn limits() {
        let mut c = CommandParser::default();
        assert_eq!(
            c.feed(&vec![b'A'; MAX_LINE + 1]),
            Err(SmtpError::CommandTooLong)
        );
        let mut c = CommandParser::default();
        assert_eq!(c.feed(b"BDAT 10 LAST\r\n"), Err(SmtpError::Bdat));
        let mut c = CommandParser::default();
        c.feed(b"DATA\r\n").unwrap();
        assert_eq!(
            c.feed(&vec![b'x'; MAX_UNDECIDED + 1]),
            Err(SmtpError::Undecided)
        );
    }

    #[test]
    fn pending_matches_replies_in_order() {
        let mut p = Pending::default();
        assert_eq!(p.answer(), Answers::Greeting);
        p.push([Command::Other, Command::Data]);
        assert_eq!(p.answer(), Answers::Command(Command::Other));
        assert_eq!(p.answer(), Answers::Command(Command::Data));
        assert_eq!(p.answer(), Answers::Unsolicited);
    }
}
