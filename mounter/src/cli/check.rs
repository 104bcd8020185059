//! `imgmount check`: the health checks of a boot, as greenboot runs them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use super::deployment_args::DeploymentArgs;
use crate::deploy::commit::StateRead;
use crate::deploy::ops::{self, AfterFailure};
use crate::deploy::store::{change, now};

/// The checks' folder.
pub const CHECK_DIR: &str = "/etc/imgmount/check";

/// Run the boot's health checks; on a required one failing, mark the try failed and
/// reboot.
///
/// Runs every executable in DIR/required.d, then in DIR/wanted.d, in name order
/// (greenboot's layout). A check passes when it exits 0 within --timeout. If a
/// required check fails while the booted deployment is on trial, the failure is
/// recorded (on its last try the deployment is marked bad, with the check's name,
/// exit status and last line of output as the reason) and the machine reboots:
/// into the next try, or into the last good deployment. A failing wanted check is
/// only reported. Exit 0 when every required check passed, 1 otherwise.
///
/// imgmount-check.service runs this before boot-complete.target, so that
/// imgmount-bless.service (after boot-complete.target) blesses only a boot whose
/// required checks passed.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CheckArgs {
    /// The folder holding required.d and wanted.d.
    #[arg(long, value_name = "DIR", default_value = CHECK_DIR)]
    pub dir: PathBuf,
    /// Seconds each check may take before it is killed and counts as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// Record a failure but do not reboot (for trying checks by hand).
    #[arg(long)]
    pub no_reboot: bool,
    #[command(flatten)]
    pub common: DeploymentArgs,
}

/// The executables of a check folder, in name order.
fn checks(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("listing {}: {e}", dir.display()),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => out.push(path),
            Ok(m) if m.is_file() => eprintln!(
                "imgmount: check: {} is not executable: skipped",
                path.display()
            ),
            _ => {}
        }
    }
    out.sort();
    Ok(out)
}

/// Runs one check: None when it passed, else why it failed.
fn run_check(path: &Path, timeout: Duration) -> Option<String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    // Its own process group, so that a timeout kills what it started too.
    let mut child = match Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Some(format!("{name} cannot be started: {e}")),
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let streams = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ];
    let mut readers = 0;
    for mut r in streams.into_iter().flatten() {
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.by_ref().take(1 << 20).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    let start = Instant::now();
    let kill_group = |pid: u32| {
        // SAFETY: kill has no memory preconditions; a negative pid names the group.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(child.id());
                let _ = child.wait();
                break Err(format!(
                    "{name} did not finish within {} s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("{name}: {e}")),
        }
    };
    // What it left running in the background may hold its output open: wait a little.
    let mut output = String::new();
    for _ in 0..readers {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(b) => output.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => break,
        }
    }
    for line in output.lines() {
        println!("{name}: {line}");
    }
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    match status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!(
            "{name} failed ({s}){}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        )),
        Err(why) => Some(why),
    }
}

pub fn run(args: CheckArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let mut failed = None;
    for path in checks(&args.dir.join("required.d"))? {
        match run_check(&path, timeout) {
            None => println!("required check {}: passed", path.display()),
            Some(why) => {
                eprintln!("imgmount: required check {}: FAILED: {why}", path.display());
                failed.get_or_insert(why);
            }
        }
    }
    for path in checks(&args.dir.join("wanted.d"))? {
        match run_check(&path, timeout) {
            None => println!("wanted check {}: passed", path.display()),
            Some(why) => eprintln!(
                "imgmount: wanted check {}: failed (only reported): {why}",
                path.display()
            ),
        }
    }
    let Some(why) = failed else {
        println!("every required health check passed");
        return Ok(());
    };
    let reason = format!("required health check {why}");
    let store = args.common.store_root()?;
    let Ok(id) = args.common.booted_deployment(&store, "record") else {
        bail!("{reason} (this boot is no deployment: nothing is recorded)");
    };
    let after = change(&store, |read: &StateRead| {
        let Some(st) = read.state() else {
            return Ok((None, AfterFailure::Stay));
        };
        Ok(ops::health_check_failed(st, id, &reason, now()))
    })?;
    match after {
        AfterFailure::Stay => {
            bail!("{reason} (deployment {id} was blessed before: it stays booted)")
        }
        AfterFailure::Reboot if args.no_reboot => {
            bail!("{reason} (recorded; not rebooting: --no-reboot)")
        }
        AfterFailure::Reboot => {
            eprintln!("imgmount: {reason}: recorded for deployment {id}; rebooting");
            let r = Command::new("systemctl").arg("reboot").status();
            if !r.is_ok_and(|s| s.success()) {
                eprintln!("imgmount: systemctl reboot failed; run it by hand");
            }
            bail!("{reason}");
        }
    }
}
