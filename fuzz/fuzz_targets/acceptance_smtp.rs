//! The acceptance proxy's SMTP parsers, fed a session in arbitrary chunks
//! (see `ha_fuzz::smtp_steps`). Properties: the replies put together are
//! exactly the server bytes (the proxy forwards them untouched), and both
//! parsers give the same result whatever the chunking (compared with a
//! feed of one byte at a time).
#![no_main]

use ha_agent::acceptance::smtp::{
    Command, CommandParser, Reply, ReplyParser, SmtpError, is_queue_id,
};
use ha_fuzz::{SmtpStep, smtp_steps};
use libfuzzer_sys::fuzz_target;

/// Replies completed before the first error, and the error.
fn replies(chunks: &[&[u8]]) -> (Vec<Reply>, Option<SmtpError>) {
    let mut p = ReplyParser::default();
    let mut out = Vec::new();
    for c in chunks {
        match p.feed(c) {
            Ok(r) => out.extend(r),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Commands completed before the first error, and the error.
fn commands(steps: &[SmtpStep], bytewise: bool) -> (Vec<Command>, Option<SmtpError>) {
    let mut p = CommandParser::default();
    let mut out = Vec::new();
    for s in steps {
        let got = match s {
            SmtpStep::Client(b) if bytewise => {
                let mut r = Ok(Vec::new());
                for byte in b {
                    match p.feed(std::slice::from_ref(byte)) {
                        Ok(c) => out.extend(c),
                        Err(e) => {
                            r = Err(e);
                            break;
                        }
                    }
                }
                r
            }
            SmtpStep::Client(b) => p.feed(b),
            SmtpStep::DataAnswered(code) => p.data_answered(*code),
            SmtpStep::Server(_) => continue,
        };
        match got {
            Ok(c) => out.extend(c),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let steps = smtp_steps(data);

    let server: Vec<&[u8]> = steps
        .iter()
        .filter_map(|s| match s {
            SmtpStep::Server(b) => Some(&b[..]),
            _ => None,
        })
        .collect();
    let all: Vec<u8> = server.concat();
    let (chunked, chunked_err) = replies(&server);
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    let (bytewise, bytewise_err) = replies(&bytes);
    let forwarded: Vec<u8> = bytewise.iter().flat_map(|r| r.raw.clone()).collect();
    assert!(all.starts_with(&forwarded), "replies are not the bytes received");
    for r in &bytewise {
        assert!((100..600).contains(&r.code));
        let _ = r.text();
        if let Some(id) = r.queued_as() {
            assert!(is_queue_id(&id), "{id:?}");
        }
    }
    assert_eq!(chunked_err, bytewise_err);
    if chunked_err.is_none() {
        assert_eq!(chunked, bytewise);
    } else {
        // The chunk that failed loses the replies it completed.
        assert!(bytewise.starts_with(&chunked));
    }

    let (chunked, chunked_err) = commands(&steps, false);
    let (bytewise, bytewise_err) = commands(&steps, true);
    assert_eq!(chunked_err, bytewise_err);
    if chunked_err.is_none() {
        assert_eq!(chunked, bytewise);
    } else {
        assert!(bytewise.starts_with(&chunked));
    }
});
