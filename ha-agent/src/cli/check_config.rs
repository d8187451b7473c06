use std::path::Path;

use anyhow::{Result, bail};

use crate::acceptance::postfix_check::{self, Expect, Severity};
use crate::config::Config;

/// `ha-agent check-config FILE`: every problem, one per line, with its key;
/// with `[acceptance] enabled`, also whether the Postfix configuration it
/// names routes mail through the proxy (each problem with file and line).
pub fn run(path: &Path) -> Result<()> {
    match crate::config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: ok (node {}, mode {:?}, {} heartbeat link(s), {} VIP(s), lease {:?})",
                path.display(),
                cfg.node.name,
                cfg.node.mode,
                cfg.heartbeat.len(),
                cfg.vips().len(),
                cfg.cluster.lease()
            );
            if cfg.acceptance.enabled {
                check_postfix(&cfg)?;
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            bail!("{} has problems (see above)", path.display())
        }
    }
}

fn check_postfix(cfg: &Config) -> Result<()> {
    let dir = &cfg.acceptance.postfix_config;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(|e| {
            eprintln!(
                "{}: cannot read: {e} (acceptance.postfix_config)",
                p.display()
            );
            anyhow::anyhow!("{} cannot be read", p.display())
        })
    };
    let (main, master) = (read("main.cf")?, read("master.cf")?);
    let findings = postfix_check::check(
        &main,
        &master,
        &Expect {
            listen: cfg.acceptance.listen,
            after_filter: cfg.acceptance.after_filter,
            timeout: cfg.acceptance.timeout,
        },
    );
    let mut errors = 0;
    for f in &findings {
        let at = dir.join(f.file);
        let place = if f.line == 0 {
            at.display().to_string()
        } else {
            format!("{}:{}", at.display(), f.line)
        };
        match f.severity {
            Severity::Error => {
                errors += 1;
                eprintln!("{place}: {}", f.message);
            }
            Severity::Warning => eprintln!("{place}: warning: {}", f.message),
        }
    }
    if errors > 0 {
        bail!(
            "{}: Postfix does not route mail through the acceptance proxy ({errors} problem(s) above)",
            dir.display()
        );
    }
    println!(
        "{}: Postfix routes mail through the acceptance proxy on {} (after-filter {})",
        dir.display(),
        cfg.acceptance.listen,
        cfg.acceptance.after_filter
    );
    Ok(())
}
