//! The life of a mount daemon: fork, mount, report readiness, serve until unmounted.
//!
//! Shared by `imgmount mount` and `imgmount setup-root`. The caller opens and checks the
//! image in the calling process, so a bad image or digest fails the command directly. Then
//! [`daemonize`] forks; the child mounts, finishes the FUSE handshake, and reports "ready" (or
//! its error) through a pipe; the parent learns the result from [`Forked::Parent`]. The child
//! detaches (stdio to /dev/null or the log) and serves until the filesystem is unmounted.
//!
//! The fork happens before any thread exists (fuser starts its threads only in
//! `Session::run`), so the child is a clean single-threaded copy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use fuser::{Config, Session, SessionACL};

use super::guard::Guarded;
use super::{ImgFs, daemon_log, session, stats};

/// Which side of [`daemonize`] this is.
pub enum Forked {
    /// The daemon: it must report to this pipe through [`serve`].
    Child(File),
    /// The caller: the daemon mounted and is serving (Ok), or it failed with this message.
    Parent(anyhow::Result<()>),
}

/// Forks. The parent waits for the child's report; the child gets the write end of the
/// report pipe.
pub fn daemonize() -> anyhow::Result<Forked> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the readiness pipe");
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (mut rx, tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (see the module comment), so the child may run
    // arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(rx);
            // SAFETY: setsid has no preconditions; it detaches from the terminal's session.
            unsafe { libc::setsid() };
            Ok(Forked::Child(tx))
        }
        _child => {
            drop(tx);
            let mut msg = String::new();
            let _ = rx.read_to_string(&mut msg);
            Ok(Forked::Parent(match msg.as_str() {
                "ok" => Ok(()),
                "" => Err(anyhow::anyhow!(
                    "the mount daemon exited before the mount was ready"
                )),
                _ => Err(anyhow::anyhow!("{msg}")),
            }))
        }
    }
}

/// What SIGTERM, SIGINT and SIGHUP do to a daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSignal {
    /// Unmount (lazily if busy), which ends the request loop.
    Unmount,
    /// Log and go on: the daemon serves the root filesystem, which outlives every process
    /// that could send it.
    Ignore,
}

/// How [`serve`] runs a mount.
pub struct ServeOptions {
    pub mountpoint: PathBuf,
    pub threads: usize,
    pub acl: SessionACL,
    /// The readiness pipe from [`Forked::Child`]; None in the foreground.
    pub ready: Option<File>,
    /// Where stderr goes once detached (None: /dev/null).
    pub log_target: Option<File>,
    /// Once detached without a `log_target`, log to syslog instead (a daemon that runs
    /// where a syslog or the journal listens).
    pub syslog_when_detached: bool,
    pub on_signal: OnSignal,
    /// Set FUSE readahead on the mount's bdi (root only).
    pub read_ahead_kb: Option<u32>,
    /// Give each request thread its own /dev/fuse descriptor (fuser opens /dev/fuse again
    /// for each when the session starts, so not after a chroot that hides /dev).
    pub clone_fd: bool,
}

/// Mounts (with `mount`, which returns the /dev/fuse descriptor), reports readiness, handles
/// signals, and serves until unmounted. `before_serving` runs once the handshake is done and
/// before the readiness report and the first request (setup-root changes its root there).
pub fn serve(
    fs: ImgFs,
    mut opts: ServeOptions,
    mount: impl FnOnce() -> anyhow::Result<OwnedFd>,
    before_serving: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Block the termination signals in this thread before fuser starts its threads, so
    // they inherit the mask and only the signal thread below receives them.
    let sigs = termination_signals();
    // SAFETY: `sigs` is an initialised signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &sigs, std::ptr::null_mut()) };

    let mut config = Config::default();
    config.acl = opts.acl;
    config.n_threads = Some(opts.threads);
    config.clone_fd = opts.clone_fd;
    let stats = fs.stats();
    let mountpoint = opts.mountpoint.clone();
    let session = mount().and_then(|fd| {
        // from_fd reads the kernel's INIT and answers it: once it returns, the mount serves.
        let session = Session::from_fd(Guarded(fs), fd, opts.acl, config).with_context(|| {
            let _ = session::unmount(&mountpoint, true);
            format!("starting the FUSE session on {}", mountpoint.display())
        })?;
        // The device number names the stats socket; read before anything else (a chroot)
        // hides /proc.
        if let Some(dev) = session::mount_dev(&mountpoint) {
            stats::listen(stats.clone(), &dev);
        }
        if let Some(kb) = opts.read_ahead_kb {
            session::set_read_ahead(&mountpoint, kb);
        }
        before_serving()?;
        Ok(session)
    });
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            if let Some(mut tx) = opts.ready.take() {
                // The waiting parent prints the error; this child leaves quietly.
                let _ = write!(tx, "{e:#}");
                std::process::exit(1);
            }
            return Err(e);
        }
    };
    let mp = mountpoint.clone();
    let on_signal = opts.on_signal;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signal(sigs, &mp, on_signal))
        .context("starting the signal thread")?;

    if let Some(mut tx) = opts.ready.take() {
        detach_stdio(opts.log_target.as_ref());
        if opts.log_target.is_none() && opts.syslog_when_detached {
            daemon_log::to_syslog();
        }
        let _ = tx.write_all(b"ok");
    }
    // Logged once detached, so that it goes where the daemon logs, not to the terminal.
    log::info!("mounted on {}", mountpoint.display());
    let result = session.run().context("serving FUSE requests");
    log::info!(
        "unmounted {}: {}",
        mountpoint.display(),
        stats.snapshot().summary()
    );
    result
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Waits for SIGTERM/SIGINT/SIGHUP and unmounts, which ends `Session::run` (or, serving the
/// root filesystem, only says it will not).
fn wait_for_signal(sigs: libc::sigset_t, mountpoint: &Path, on_signal: OnSignal) {
    loop {
        let mut sig = 0;
        // SAFETY: the set is initialised and blocked in every thread.
        if unsafe { libc::sigwait(&sigs, &mut sig) } != 0 {
            continue;
        }
        if on_signal == OnSignal::Ignore {
            log::warn!("signal {sig} ignored: this daemon serves the root filesystem");
            continue;
        }
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        match session::unmount(mountpoint, false) {
            Ok(_) => return,
            Err(e) => log::error!("{e:#}"),
        }
    }
}

/// Points stdin/stdout at /dev/null and stderr at the log file (or /dev/null), so the
/// daemon holds no pipe of whoever started it, and leaves the working directory.
fn detach_stdio(log: Option<&File>) {
    let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") else {
        return;
    };
    let err_fd = log.map_or(null.as_raw_fd(), |f| f.as_raw_fd());
    // SAFETY: dup2 onto the standard descriptors with descriptors we hold open.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err_fd, 2);
    }
    let _ = std::env::set_current_dir("/");
}
