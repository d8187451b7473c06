//! Does a Postfix configuration route mail through the acceptance proxy?
//! Pure: `main.cf` and `master.cf` text in, findings (file, line, what is
//! wrong) out; `ha-agent check-config` reads the files and prints them.

use std::net::SocketAddr;
use std::time::Duration;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Mail would be acknowledged without the proxy, or not at all.
    Error,
    /// Works, but not as documented (e.g. short queue IDs).
    Warning,
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// `main.cf` or `master.cf` (the caller prefixes the directory).
    pub file: &'static str,
    /// 1-based; 0 when the problem is something missing from the file.
    pub line: usize,
    pub message: String,
}

/// What the proxy expects of Postfix.
#[derive(Debug, Clone)]
pub struct Expect {
    pub listen: SocketAddr,
    pub after_filter: SocketAddr,
    pub timeout: Duration,
}

/// A `name = value` of main.cf or a `-o name=value` of master.cf.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    value: String,
    line: usize,
}

/// One master.cf service.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    kind: String,
    command: String,
    line: usize,
    overrides: Vec<Param>,
}

impl Service {
    fn get(&self, name: &str) -> Option<&Param> {
        self.overrides.iter().rev().find(|p| p.name == name)
    }
}

/// Logical lines (a line starting with whitespace continues the previous
/// one), without comments and blank lines: each as its physical parts
/// (line number, text).
fn logical_lines(text: &str) -> Vec<Vec<(usize, &str)>> {
    let mut out: Vec<Vec<(usize, &str)>> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if raw.starts_with([' ', '\t'])
            && let Some(last) = out.last_mut()
        {
            last.push((i + 1, t));
            continue;
        }
        out.push(vec![(i + 1, t)]);
    }
    out
}

fn main_cf(text: &str) -> Vec<Param> {
    logical_lines(text)
        .into_iter()
        .filter_map(|parts| {
            let line = parts[0].0;
            let l: Vec<&str> = parts.iter().map(|p| p.1).collect();
            let l = l.join(" ");
            let (n, v) = l.split_once('=')?;
            Some(Param {
                name: n.trim().to_owned(),
                value: v.trim().to_owned(),
                line,
            })
        })
        .collect()
}

fn master_cf(text: &str) -> Vec<Service> {
    let mut out = Vec::new();
    for parts in logical_lines(text) {
        let line = parts[0].0;
        let f: Vec<(usize, &str)> = parts
            .iter()
            .flat_map(|(n, t)| t.split_whitespace().map(move |w| (*n, w)))
            .collect();
        if f.len() < 8 {
            continue;
        }
        let mut overrides = Vec::new();
        let mut i = 8;
        while i < f.len() {
            let (at, word) = f[i];
            let setting = if word == "-o" && i + 1 < f.len() {
                i += 1;
                Some(f[i].1)
            } else {
                word.strip_prefix("-o").filter(|r| !r.is_empty())
            };
            if let Some((n, v)) = setting.and_then(|x| x.split_once('=')) {
                overrides.push(Param {
                    name: n.to_owned(),
                    value: v.to_owned(),
                    line: at,
                });
            }
            i += 1;
        }
        out.push(Service {
            name: f[0].1.to_owned(),
            kind: f[1].1.to_owned(),
            command: f[7].1.to_owned(),
            line,
            overrides,
        });
    }
    out
}

/// `host:port` as Postfix writes an endpoint (`inet:` prefix, brackets,
/// `localhost`, a bare port meaning localhost).
fn endpoint(v: &str) -> Option<SocketAddr> {
    let v = v.trim().trim_start_matches("inet:");
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => ("127.0.0.1", v),
    };
    let host = if host.is_empty() || host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port: u16 = port.parse().ok()?;
    Some(SocketAddr::new(host.parse().ok()?, port))
}

/// A Postfix time value (`100s`, `2m`, `100` = seconds).
fn postfix_time(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map_or((v, "s"), |i| (&v[..i], &v[i..]));
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "w" => n * 604_800,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Checks `main.cf` and `master.cf` against what the proxy expects.
pub fn check(main: &str, master: &str, e: &Expect) -> Vec<Finding> {
    let globals = main_cf(main);
    let global = |n: &str| globals.iter().rev().find(|p| p.name == n);
    let services = master_cf(master);
    let mut out = Vec::new();
    let err = |file, line, message: String| Finding {
        severity: Severity::Error,
        file,
        line,
        message,
    };

    let smtpds: Vec<&Service> = services
        .iter()
        .filter(|s| s.command == "smtpd" && (s.kind == "inet" || s.kind == "pass"))
        .collect();
    let is_after = |s: &Service| s.kind == "inet" && endpoint(&s.name) == Some(e.after_filter);
    // The proxy filter a service uses: its -o, else main.cf's.
    let filter_of = |s: &Service| -> (Option<String>, &'static str, usize) {
        match s.get("smtpd_proxy_filter") {
            Some(p) => (Some(p.value.clone()), "master.cf", p.line),
            None => match global("smtpd_proxy_filter") {
                Some(p) => (Some(p.value.clone()), "main.cf", p.line),
                None => (None, "master.cf", s.line),
            },
        }
    };

    match smtpds.iter().find(|s| is_after(s)) {
        None => out.push(err(
            "master.cf",
            0,
            format!(
                "no smtpd listens on {} (acceptance.after_filter): add the after-filter service \
                 (see docs/acceptance.md)",
                e.after_filter
            ),
        )),
        Some(a) => {
            if let (Some(v), file, line) = filter_of(a)
                && !v.is_empty()
            {
                out.push(err(
                    file,
                    line,
                    format!(
                        "the after-filter smtpd {} has smtpd_proxy_filter={v}: it would hand mail \
                         back to a proxy (a loop); give it -o smtpd_proxy_filter=",
                        a.name
                    ),
                ));
            }
        }
    }

    let public: Vec<&&Service> = smtpds.iter().filter(|s| !is_after(s)).collect();
    if public.is_empty() {
        out.push(err("master.cf", 0, "no public smtpd service found".into()));
    }
    for s in &public {
        let (v, file, line) = filter_of(s);
        match v.as_deref().and_then(endpoint) {
            Some(a) if a == e.listen => {}
            _ => out.push(err(
                file,
                line,
                format!(
                    "smtpd service {} ({}) does not route through the proxy: add \
                     -o smtpd_proxy_filter={}; mail it accepts is acknowledged before the peer \
                     holds it",
                    s.name, s.kind, e.listen
                ),
            )),
        }
        let timeout = s
            .get("smtpd_proxy_timeout")
            .map(|p| ("master.cf", p.line, p.value.clone()))
            .or_else(|| {
                global("smtpd_proxy_timeout").map(|p| ("main.cf", p.line, p.value.clone()))
            });
        let (tfile, tline, tval) = timeout.unwrap_or(("main.cf", 0, "100s".into()));
        if let Some(t) = postfix_time(&tval)
            && t <= e.timeout
        {
            out.push(err(
                tfile,
                tline,
                format!(
                    "smtpd_proxy_timeout {tval} (service {}) is not above acceptance.timeout {}: \
                     the smtpd would give up on the proxy before its policy applies",
                    s.name,
                    humantime::format_duration(e.timeout)
                ),
            ));
        }
    }

    let long = global("enable_long_queue_ids");
    if long.is_none_or(|p| p.value != "yes") {
        out.push(Finding {
            severity: Severity::Warning,
            file: "main.cf",
            line: long.map_or(0, |p| p.line),
            message: "enable_long_queue_ids is not yes: short queue IDs are renamed by \
                      postsuper -s at promotion and unique on one node only (see \
                      docs/acceptance.md)"
                .into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            listen: "127.0.0.1:10025".parse().unwrap(),
            after_filter: "127.0.0.1:10026".parse().unwrap(),
            timeout: Duration::from_secs(10),
        }
    }

    const MAIN: &str = "myhostname = x\nenable_long_queue_ids = yes\n";
    const GOOD: &str = "\
# comment
smtp      inet  n       -       y       -       20      smtpd
  -o smtpd_proxy_filter=127.0.0.1:10025
  -o smtpd_client_connection_count_limit=10
127.0.0.1:10026 inet n  -       n       -       -       smtpd
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
pickup    unix  n       -       y       60      1       pickup
";

    #[test]
    fn the_documented_setup_passes() {
        assert_eq!(check(MAIN, GOOD, &expect()), vec![]);
    }

    #[test]
    fn a_public_smtpd_without_the_proxy_is_named_with_its_line() {
        let master = format!(
            "{GOOD}submission inet n - y - - smtpd\n  -o smtpd_tls_security_level=encrypt\n"
        );
        let f = check(MAIN, &master, &expect());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].file, f[0].line), ("master.cf", 9));
        assert!(f[0].message.contains("submission"), "{f:?}");
    }

    #[test]
    fn wrong_port_missing_after_filter_and_a_loop() {
        let master = GOOD.replace("10025", "10099");
        let f = check(MAIN, &master, &expect());
        assert!(
            f.iter()
                .any(|x| x.line == 3 && x.message.contains("does not route"))
        );
        let master = GOOD.replace("127.0.0.1:10026 inet", "127.0.0.1:10027 inet");
        let f = check(MAIN, &master, &expect());
        assert!(
            f.iter()
                .any(|x| x.message.contains("no smtpd listens on 127.0.0.1:10026")),
            "{f:?}"
        );
        // A global filter without the after-filter's override loops.
        let master = GOOD.replace("  -o smtpd_proxy_filter=127.0.0.1:10025\n", "");
        let main = format!("{MAIN}smtpd_proxy_filter = inet:localhost:10025\n");
        let f = check(&main, &master, &expect());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].file, f[0].line), ("main.cf", 3));
        assert!(f[0].message.contains("loop"));
    }

    #[test]
    fn proxy_timeout_must_exceed_ours_and_long_ids_are_advised() {
        let main = "smtpd_proxy_timeout = 5s\n";
        let f = check(main, GOOD, &expect());
        assert!(f.iter().any(|x| x.severity == Severity::Error
            && x.file == "main.cf"
            && x.line == 1
            && x.message.contains("smtpd_proxy_timeout")));
        assert!(f.iter().any(
            |x| x.severity == Severity::Warning && x.message.contains("enable_long_queue_ids")
        ));
        assert_eq!(postfix_time("2m"), Some(Duration::from_secs(120)));
        assert_eq!(postfix_time("100"), Some(Duration::from_secs(100)));
    }

    #[test]
    fn postscreen_pass_service_counts_as_public() {
        let master = GOOD.replace(
            "smtp      inet  n       -       y       -       20      smtpd",
            "smtp      inet  n       -       y       -       1       postscreen\nsmtpd     pass  -       -       y       -       -       smtpd",
        );
        assert_eq!(check(MAIN, &master, &expect()), vec![]);
    }
}
