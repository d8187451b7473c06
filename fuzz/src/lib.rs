//! What the fuzz targets share: the key and cluster they authenticate
//! with, the record format of the SMTP target, and the starting inputs, built
//! with the product's own encoders (`seed-corpus` writes them to
//! `fuzz/corpus/<target>/`).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use ha_agent::heartbeat::{HbKey, Heartbeat, Mode, Timing};
use ha_agent::sync::proto::{self, Attrs, ErrorCode, Frame, Hello, Purpose, WireEntry};

/// Cluster id the heartbeat target decodes for.
pub const CLUSTER: u32 = 7;

/// The heartbeat key of [`CLUSTER`] (derived once: key derivation is slow
/// next to a decode).
pub fn hb_key() -> &'static HbKey {
    static KEY: OnceLock<HbKey> = OnceLock::new();
    KEY.get_or_init(|| HbKey::derive(b"fuzz", CLUSTER).expect("non-empty password"))
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[&str] = &[
    "heartbeat",
    "sync_proto",
    "config_sync_wire",
    "config",
    "monitor_reply",
    "acceptance_smtp",
];

/// One step of an SMTP session as the acceptance target reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpStep {
    /// Bytes from the client.
    Client(Vec<u8>),
    /// Bytes from the after-filter server.
    Server(Vec<u8>),
    /// The server answered `DATA` with this code.
    DataAnswered(u16),
}

/// Reads the acceptance target's input: records of `tag, length, bytes`
/// (tag 0 client, 1 server, 2 data answered with a big-endian code); a
/// truncated last record is cut short, not dropped.
pub fn smtp_steps(mut data: &[u8]) -> Vec<SmtpStep> {
    let mut out = Vec::new();
    while let [tag, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        let (body, tail) = rest.split_at(n);
        out.push(match tag % 3 {
            0 => SmtpStep::Client(body.to_vec()),
            1 => SmtpStep::Server(body.to_vec()),
            _ => SmtpStep::DataAnswered(match body {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                [a] => u16::from(*a),
                [] => 354,
            }),
        });
        data = tail;
    }
    out
}

/// The inverse of [`smtp_steps`] (chunks longer than 255 bytes are split).
pub fn smtp_record(steps: &[SmtpStep]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in steps {
        match s {
            SmtpStep::Client(b) | SmtpStep::Server(b) => {
                let tag = u8::from(matches!(s, SmtpStep::Server(_)));
                for chunk in b.chunks(255) {
                    out.push(tag);
                    out.push(chunk.len() as u8);
                    out.extend_from_slice(chunk);
                }
            }
            SmtpStep::DataAnswered(code) => {
                out.extend_from_slice(&[2, 2]);
                out.extend_from_slice(&code.to_be_bytes());
            }
        }
    }
    out
}

/// Seed inputs of `target`: (file name, bytes).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "heartbeat" => heartbeat_seeds(),
        "sync_proto" => sync_seeds(),
        "config_sync_wire" => config_sync_seeds(),
        "config" => config_seeds(),
        "monitor_reply" => monitor_seeds(),
        "acceptance_smtp" => smtp_seeds(),
        other => panic!("no target {other}"),
    }
}

fn heartbeat_seeds() -> Vec<(String, Vec<u8>)> {
    let hb = Heartbeat {
        cluster_id: CLUSTER,
        node_id: 1,
        flags: 1,
        epoch: 1_700_000_000,
        seq: 1,
        send_time_ns: 123_456_789,
        echo_epoch: 1_700_000_001,
        echo_seq: 0,
        timing: Timing {
            interval: Duration::from_millis(1),
            threshold: Duration::from_millis(6),
            lease: Duration::from_micros(3500),
        },
        configured_mode: Mode::Primary,
        effective_mode: Mode::Primary,
        priority: 100,
        term: 3,
        sync_seq: 0,
    };
    let passive = Heartbeat {
        node_id: 2,
        flags: 0,
        seq: 9_000,
        configured_mode: Mode::Secondary,
        effective_mode: Mode::Failed,
        sync_seq: 42,
        ..hb
    };
    vec![
        ("active".into(), hb.encode(hb_key()).to_vec()),
        ("passive".into(), passive.encode(hb_key()).to_vec()),
    ]
}

fn attrs() -> Attrs {
    Attrs {
        mode: 0o100_600,
        mtime_ns: 1_700_000_000_123_456_789,
        owner: "postfix".into(),
        group: "postdrop".into(),
    }
}

/// One frame of every kind, error frames included.
pub fn sync_frames() -> Vec<(&'static str, Frame)> {
    let hello = Hello {
        version: proto::VERSION,
        purpose: Purpose::Replicate,
        node: "mail-a".into(),
        roots: vec!["mail".into(), "spool".into()],
        acked_seq: 42,
    };
    vec![
        ("hello", Frame::Hello(hello.clone())),
        (
            "welcome",
            Frame::Welcome(Hello {
                purpose: Purpose::Failback,
                roots: vec![],
                ..hello
            }),
        ),
        ("manifest_request_all", Frame::ManifestRequest { hash_of: vec![] }),
        (
            "manifest_request_hashes",
            Frame::ManifestRequest {
                hash_of: vec![(1, "active/A/AB12".into())],
            },
        ),
        (
            "manifest_entries",
            Frame::ManifestEntries(vec![
                WireEntry {
                    root: 0,
                    path: "cur".into(),
                    is_dir: true,
                    size: 0,
                    ctime_ns: 5,
                    attrs: attrs(),
                    hash: None,
                },
                WireEntry {
                    root: 1,
                    path: "cur/x".into(),
                    is_dir: false,
                    size: 9,
                    ctime_ns: -1,
                    attrs: attrs(),
                    hash: Some([3; 32]),
                },
            ]),
        ),
        ("manifest_end", Frame::ManifestEnd),
        (
            "file_data",
            Frame::FileData {
                root: 0,
                path: "new/1".into(),
                size: 1234,
                attrs: attrs(),
            },
        ),
        ("body_end", Frame::BodyEnd { hash: [9; 32] }),
        ("body_void", Frame::BodyVoid),
        (
            "rename",
            Frame::Rename {
                root: 0,
                from: "tmp/1".into(),
                to: "new/1".into(),
            },
        ),
        (
            "delete",
            Frame::Delete {
                root: 1,
                path: "deferred/A/ABC".into(),
            },
        ),
        (
            "mkdir",
            Frame::Mkdir {
                root: 0,
                path: ".Sent".into(),
                attrs: attrs(),
            },
        ),
        (
            "setattr",
            Frame::SetAttr {
                root: 0,
                path: "cur/1".into(),
                attrs: attrs(),
            },
        ),
        ("in_sync", Frame::InSync),
        ("ack", Frame::Ack),
        (
            "error_no_space",
            Frame::Error {
                code: ErrorCode::NoSpace,
                path: "new/1".into(),
                message: "disk full".into(),
            },
        ),
        (
            "error_protocol",
            Frame::Error {
                code: ErrorCode::Protocol,
                path: String::new(),
                message: "unexpected frame".into(),
            },
        ),
    ]
}

fn sync_seeds() -> Vec<(String, Vec<u8>)> {
    sync_frames()
        .into_iter()
        .enumerate()
        .map(|(i, (name, f))| {
            let mut b = BytesMut::new();
            proto::encode(&f, i as u64 * 1000 + 1, &mut b);
            (name.to_owned(), b.to_vec())
        })
        .collect()
}

/// A valid minimal configuration (node A of a pair).
pub const MINIMAL_CONFIG: &str = r#"
[node]
name = "mail-a"
mode = "primary"

[cluster]
id = 7
password = "correct horse"

[[heartbeat]]
interface = "hb0"
local = "10.200.1.1"
peer = "10.200.1.2"

[[interface]]
name = "svc0"
port_monitor = true
vip = { action = "set", address = "10.200.0.100/24" }
"#;

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let example = include_str!("../../examples/ha.toml")
        .replace("password_file = \"/etc/ha/password\"", "password = \"pw\"");
    let inline_cluster = MINIMAL_CONFIG.replace(
        "[cluster]\nid = 7\npassword = \"correct horse\"\n",
        "cluster = { id = 7, password = \"correct horse\", lease = \"3ms\" }\n",
    );
    vec![
        ("minimal".into(), MINIMAL_CONFIG.as_bytes().to_vec()),
        ("example".into(), example.into_bytes()),
        ("inline_cluster".into(), inline_cluster.into_bytes()),
    ]
}

fn config_sync_seeds() -> Vec<(String, Vec<u8>)> {
    use ha_agent::cluster::store::ApplyReport;
    use ha_agent::cluster::version::Version;
    use ha_agent::config_sync::wire::{Blob, MemberReport, Msg, to_body};
    let view = ha_agent::config::parse(MINIMAL_CONFIG, None)
        .expect("the minimal configuration is valid")
        .synced_view();
    let report = ApplyReport {
        version: Version::FIRST,
        ok: true,
        detail: "applied".into(),
        at_ms: 1_700_000_000_000,
        took_ms: 12.5,
    };
    let member = MemberReport {
        node: "mail-b".into(),
        version: Some(Version::FIRST),
        origin: Some("mail-a".into()),
        content: Some("ab".repeat(32)),
        drift: false,
        last_apply: Some(report.clone()),
    };
    let msgs = [
        (
            "state",
            Msg::State {
                view: view.clone(),
                checksum: "ab".repeat(32),
            },
        ),
        (
            "push",
            Msg::Push {
                view: view.clone(),
                running: view.clone(),
                bundle: None,
            },
        ),
        (
            "applied",
            Msg::Applied {
                view,
                checksum: "cd".repeat(32),
                hook: Some("reloaded".into()),
            },
        ),
        (
            "refused",
            Msg::Refused {
                reason: "lease rule broken".into(),
            },
        ),
        (
            "member",
            Msg::Member {
                cluster: 7,
                report: Box::new(member.clone()),
            },
        ),
        (
            "ping",
            Msg::Ping {
                cluster: 7,
                version: Some(Version::FIRST),
                up: vec!["mail-a".into(), "mail-b".into()],
                check: true,
            },
        ),
        (
            "install",
            Msg::Install {
                cluster: 7,
                origin: "mail-a".into(),
                version: Version::FIRST,
                members: vec![],
                manifest: Box::default(),
                blobs: vec![Blob {
                    hash: "ef".repeat(32),
                    data: b"smtpd_banner = mail\n".to_vec(),
                }],
                repair: false,
            },
        ),
        (
            "missing",
            Msg::Missing {
                hashes: vec!["ef".repeat(32)],
            },
        ),
        (
            "installed",
            Msg::Installed {
                report,
                member: Box::new(member),
            },
        ),
    ];
    msgs.into_iter()
        .map(|(n, m)| (n.to_owned(), to_body(&m).expect("serialisable")))
        .collect()
}

fn monitor_seeds() -> Vec<(String, Vec<u8>)> {
    // First byte: the service (0 SMTP, 1 POP3, 2 IMAP, 3 HTTP); the rest
    // is what the server sent.
    [
        ("smtp", 0u8, &b"220 mail.example ESMTP Postfix\r\n"[..]),
        ("smtp_multi", 0, b"220-mail.example\r\n"),
        ("pop3", 1, b"+OK Dovecot ready.\r\n"),
        ("imap", 2, b"* OK [CAPABILITY IMAP4rev1] ready\r\n"),
        ("http", 3, b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n"),
        ("refused", 0, b"421 busy\r\n"),
    ]
    .into_iter()
    .map(|(n, s, b)| {
        let mut v = vec![s];
        v.extend_from_slice(b);
        (n.to_owned(), v)
    })
    .collect()
}

fn smtp_seeds() -> Vec<(String, Vec<u8>)> {
    use SmtpStep::*;
    let c = |s: &str| Client(s.as_bytes().to_vec());
    let s = |s: &str| Server(s.as_bytes().to_vec());
    let session = vec![
        s("220 mail.example ESMTP\r\n"),
        c("EHLO client.example\r\n"),
        s("250-mail.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        c("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"),
        s("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"),
        DataAnswered(354),
        c("Subject: x\r\n\r\n..stuffed\r\nbody\r\n.\r\n"),
        s("250 2.0.0 Ok: queued as 4VzqXv1Jc8z2lG\r\n"),
        c("QUIT\r\n"),
        s("221 2.0.0 Bye\r\n"),
    ];
    let refused = vec![
        s("220 mail.example ESMTP\r\n"),
        c("DATA\r\nRSET\r\n"),
        s("554 5.5.1 no valid recipients\r\n"),
        DataAnswered(554),
        s("250 2.0.0 Ok\r\n"),
    ];
    vec![
        ("session".into(), smtp_record(&session)),
        ("refused_data".into(), smtp_record(&refused)),
    ]
}
