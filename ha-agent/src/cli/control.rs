//! `status`, `switch`, `sync`: clients of the control socket.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::control::{Request, SwitchTo, SyncWhat, render, request};

/// Which agent to talk to.
#[derive(clap::Args)]
pub struct Target {
    /// Control socket of the agent (default: the one named by the config).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Configuration file naming the control socket.
    #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let cfg = crate::config::load(&self.config).with_context(|| {
            format!(
                "finding the control socket via {} (or pass --socket)",
                self.config.display()
            )
        })?;
        Ok(cfg.runtime.control_socket)
    }
}

pub fn status(t: &Target, json: bool) -> Result<()> {
    let r = request(&t.socket()?, &Request::Status)?;
    let Some(s) = r.status.filter(|_| r.ok) else {
        bail!("status refused: {}", r.message)
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

pub fn switch(t: &Target, to: SwitchTo) -> Result<()> {
    let r = request(&t.socket()?, &Request::Switch { to })?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!("{}", r.message);
    Ok(())
}

pub fn sync(t: &Target, what: SyncWhat) -> Result<()> {
    let r = request(&t.socket()?, &Request::Sync { what })?;
    if !r.ok {
        bail!("sync: {}", r.message);
    }
    println!("{}", r.message);
    Ok(())
}

/// A request whose answer is its message (`config generations`, `config rollback`).
pub fn simple(t: &Target, req: &Request, what: &str) -> Result<()> {
    let r = request(&t.socket()?, req)?;
    if !r.ok {
        bail!("{what} refused: {}", r.message);
    }
    print!("{}", r.message);
    if !r.message.ends_with('\n') {
        println!();
    }
    Ok(())
}
