//! One proxied SMTP connection, pure: bytes in from either side, bytes out
//! to forward, and the end-of-data replies that must wait for the peer.
//!
//! Client bytes go to the after-filter untouched. Server replies go to the
//! client untouched and in order, except that the reply to the end of a
//! message, when it is a `250 ... queued as ID`, becomes a [`Held`] entry:
//! nothing behind it reaches the client until the hold is decided (the
//! shell stops reading the after-filter meanwhile, so what waits here is
//! bounded by one read).

use std::collections::VecDeque;

use super::smtp::{Answers, Command, CommandParser, Pending, Reply, ReplyParser, SmtpError};
use crate::fsm::Nanos;

/// An end-of-data reply waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Number of the hold within the session.
    pub token: u64,
    /// The queue ID the after-filter named; `None` when a 2xx named none.
    pub queue_id: Option<String>,
    /// When the lone dot went to the after-filter: only a copy made after
    /// it can hold the whole message.
    pub dot_at: Nanos,
    /// The after-filter's reply, forwarded as is when the hold is released.
    pub reply: Vec<u8>,
}

/// What the client gets instead of, or as, a held reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The after-filter's own reply.
    Original,
    /// A reply of the proxy's (the strict policy's 451).
    Replace(Vec<u8>),
}

#[derive(Debug)]
enum Out {
    Bytes(Vec<u8>),
    Hold {
        held: Held,
        /// Returned by [`Session::new_holds`] already.
        handed: bool,
        answer: Option<Answer>,
    },
}

/// The state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    commands: CommandParser,
    replies: ReplyParser,
    pending: Pending,
    /// Times of the lone dots sent, oldest first (one per EndOfData pending).
    dots: VecDeque<Nanos>,
    out: VecDeque<Out>,
    next_token: u64,
}

impl Session {
    /// Client bytes, about to be forwarded to the after-filter at `now`.
    pub fn from_client(&mut self, bytes: &[u8], now: Nanos) -> Result<(), SmtpError> {
        let cmds = self.commands.feed(bytes)?;
        self.record(cmds, now);
        Ok(())
    }

    fn record(&mut self, cmds: Vec<Command>, now: Nanos) {
        for c in &cmds {
            if *c == Command::EndOfData {
                self.dots.push_back(now);
            }
        }
        self.pending.push(cmds);
    }

    /// Bytes from the after-filter. Replies become output in order; an
    /// end-of-data success becomes a hold.
    pub fn from_server(&mut self, bytes: &[u8], now: Nanos) -> Result<(), SmtpError> {
        for reply in self.replies.feed(bytes)? {
            match self.pending.answer() {
                Answers::Command(Command::Data) => {
                    let cmds = self.commands.data_answered(reply.code)?;
                    self.record(cmds, now);
                    self.out.push_back(Out::Bytes(reply.raw));
                }
                Answers::Command(Command::EndOfData) => {
                    let dot_at = self.dots.pop_front().unwrap_or(now);
                    self.end_of_data(reply, dot_at);
                }
                _ => self.out.push_back(Out::Bytes(reply.raw)),
            }
        }
        Ok(())
    }

    fn end_of_data(&mut self, reply: Reply, dot_at: Nanos) {
        if !(200..300).contains(&reply.code) {
            // Refused (size, content, a cleanup failure): nothing was queued.
            self.out.push_back(Out::Bytes(reply.raw));
            return;
        }
        self.next_token += 1;
        let held = Held {
            token: self.next_token,
            queue_id: reply.queued_as(),
            dot_at,
            reply: reply.raw,
        };
        self.out.push_back(Out::Hold {
            held,
            handed: false,
            answer: None,
        });
    }

    /// Holds not yet handed to the hold core (each is returned once,
    /// without its reply bytes, which stay here).
    pub fn new_holds(&mut self) -> Vec<Held> {
        let mut v = Vec::new();
        for o in &mut self.out {
            if let Out::Hold {
                held,
                handed: handed @ false,
                ..
            } = o
            {
                *handed = true;
                v.push(Held {
                    reply: Vec::new(),
                    ..held.clone()
                });
            }
        }
        v
    }

    /// The decision on hold `token`.
    pub fn decide(&mut self, token: u64, answer: Answer) {
        for o in &mut self.out {
            if let Out::Hold {
                held,
                answer: a @ None,
                ..
            } = o
                && held.token == token
            {
                *a = Some(answer);
                return;
            }
        }
    }

    /// Bytes ready for the client, in order, up to the first undecided hold.
    pub fn to_client(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(o) = self.out.front() {
            if matches!(o, Out::Hold { answer: None, .. }) {
                break;
            }
            match self.out.pop_front() {
                Some(Out::Bytes(b)) => v.extend_from_slice(&b),
                Some(Out::Hold {
                    held,
                    answer: Some(Answer::Original),
                    ..
                }) => v.extend_from_slice(&held.reply),
                Some(Out::Hold {
                    answer: Some(Answer::Replace(b)),
                    ..
                }) => v.extend_from_slice(&b),
                _ => {}
            }
        }
        v
    }

    /// Whether a reply waits for a decision (the shell stops reading the
    /// after-filter meanwhile).
    pub fn holding(&self) -> bool {
        self.out
            .iter()
            .any(|o| matches!(o, Out::Hold { answer: None, .. }))
    }

    /// The undecided holds' tokens (for a client that left).
    pub fn undecided(&self) -> Vec<u64> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Out::Hold {
                    held, answer: None, ..
                } => Some(held.token),
                _ => None,
            })
            .collect()
    }

    /// Whether the client is in the middle of a message body.
    pub fn in_body(&self) -> bool {
        self.commands.in_body()
    }

    /// Commands sent and not yet answered.
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// A transaction up to the dot, pipelined as Postfix's smtpd sends it.
    fn transaction(x: &mut Session, t: Nanos) {
        x.from_server(b"220 after ESMTP\r\n", t).unwrap();
        assert_eq!(s(&x.to_client()), "220 after ESMTP\r\n");
        x.from_client(b"EHLO before\r\n", t).unwrap();
        x.from_server(b"250-after\r\n250 PIPELINING\r\n", t)
            .unwrap();
        assert_eq!(s(&x.to_client()), "250-after\r\n250 PIPELINING\r\n");
        x.from_client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", t)
            .unwrap();
        x.from_server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n", t)
            .unwrap();
        assert_eq!(
            s(&x.to_client()),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n"
        );
        x.from_client(b"Subject: t\r\n\r\n..stuffed\r\n.\r\n", t + 5)
            .unwrap();
    }

    #[test]
    fn queued_reply_is_held_until_decided_and_later_replies_wait_behind_it() {
        let mut x = Session::default();
        transaction(&mut x, 1);
        x.from_client(b"QUIT\r\n", 6).unwrap();
        x.from_server(
            b"250 2.0.0 Ok: queued as 4VzqXv1Jc8z2lG\r\n221 2.0.0 Bye\r\n",
            9,
        )
        .unwrap();
        assert!(x.holding());
        assert_eq!(x.to_client(), b"", "nothing passes a held reply");
        let holds = x.new_holds();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].queue_id.as_deref(), Some("4VzqXv1Jc8z2lG"));
        assert_eq!(holds[0].dot_at, 6, "the time the dot was sent");
        assert!(x.new_holds().is_empty(), "handed out once");
        x.decide(holds[0].token, Answer::Original);
        assert!(!x.holding());
        assert_eq!(
            s(&x.to_client()),
            "250 2.0.0 Ok: queued as 4VzqXv1Jc8z2lG\r\n221 2.0.0 Bye\r\n"
        );
    }

    #[test]
    fn replaced_answer_goes_out_in_place() {
        let mut x = Session::default();
        transaction(&mut x, 1);
        x.from_server(b"250 2.0.0 Ok: queued as ABC123\r\n", 9)
            .unwrap();
        let h = x.new_holds().remove(0);
        x.decide(h.token, Answer::Replace(b"451 4.3.0 no\r\n".to_vec()));
        assert_eq!(s(&x.to_client()), "451 4.3.0 no\r\n");
    }

    #[test]
    fn refused_message_passes_at_once() {
        let mut x = Session::default();
        transaction(&mut x, 1);
        x.from_server(b"552 5.3.4 Message size exceeds fixed limit\r\n", 9)
            .unwrap();
        assert!(!x.holding());
        assert_eq!(
            s(&x.to_client()),
            "552 5.3.4 Message size exceeds fixed limit\r\n"
        );
    }

    #[test]
    fn success_without_queue_id_is_held_unmapped() {
        let mut x = Session::default();
        transaction(&mut x, 1);
        x.from_server(b"250 Ok\r\n", 9).unwrap();
        let h = x.new_holds();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].queue_id, None);
    }

    #[test]
    fn rcpt_reply_that_mentions_queued_as_is_not_held() {
        let mut x = Session::default();
        x.from_server(b"220 x\r\n", 0).unwrap();
        x.from_client(b"RCPT TO:<a@b>\r\n", 0).unwrap();
        x.from_server(b"250 queued as ABC\r\n", 0).unwrap();
        assert!(!x.holding());
    }

    #[test]
    fn two_messages_on_one_connection() {
        let mut x = Session::default();
        transaction(&mut x, 1);
        x.from_server(b"250 2.0.0 Ok: queued as AAA123\r\n", 9)
            .unwrap();
        let a = x.new_holds().remove(0);
        x.decide(a.token, Answer::Original);
        x.to_client();
        x.from_client(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n", 10)
            .unwrap();
        x.from_server(b"250 Ok\r\n250 Ok\r\n354 go\r\n", 11)
            .unwrap();
        x.from_client(b"x\r\n.\r\n", 12).unwrap();
        x.from_server(b"250 2.0.0 Ok: queued as BBB123\r\n", 13)
            .unwrap();
        let b = x.new_holds().remove(0);
        assert_eq!((b.queue_id.as_deref(), b.dot_at), (Some("BBB123"), 12));
        assert_ne!(a.token, b.token);
    }
}
