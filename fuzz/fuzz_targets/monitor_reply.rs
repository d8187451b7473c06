//! The remote monitors' reading of a service's first line (SMTP, POP3,
//! IMAP, HTTP). First byte: the service; the rest: what the server sent.
#![no_main]

use ha_agent::monitor::remote::{Service, first_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((svc, raw)) = data.split_first() else {
        return;
    };
    let service = [Service::Smtp, Service::Pop3, Service::Imap, Service::Http][usize::from(svc % 4)];
    let Some(line) = first_line(raw) else {
        assert!(raw.is_empty());
        return;
    };
    if service.accepts(&line) {
        let prefix = match service {
            Service::Smtp => "220",
            Service::Pop3 => "+OK",
            Service::Imap => "* ",
            Service::Http => "HTTP/",
        };
        assert!(line.starts_with(prefix), "{service:?} accepted {line:?}");
    }
    // Judged on the trimmed line: trimming again changes nothing.
    assert_eq!(first_line(line.as_bytes()).as_deref().unwrap_or(""), line);
});
