//! Where a mount daemon's log goes: standard error in the foreground (or the
//! `--log-file` it was given), syslog once it has detached without one, so a refused read
//! reaches the journal (or syslog) instead of /dev/null. The root filesystem's daemon
//! writes to /dev/kmsg as its standard error ([`LogStyle::Kmsg`]), since no syslog runs in
//! the initramfs.
//!
//! Syslog messages are datagrams in the local format (`<PRI>imgmount[PID]: MESSAGE`),
//! sent to `/dev/log` (or `$IMGMOUNT_SYSLOG_SOCKET`), which journald and every syslog
//! daemon read. Nothing listening there means the message is dropped, as syslog(3) does.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

/// The syslog facility of daemons (LOG_DAEMON).
const FACILITY_DAEMON: u8 = 3;
/// Longest message sent: syslog daemons may drop larger datagrams.
const MAX_DATAGRAM: usize = 8 << 10;

enum Sink {
    Stderr,
    Syslog { socket: UnixDatagram, path: PathBuf },
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// How records written to standard error look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// `imgmount[PID]: level: message`
    Plain,
    /// The same with a syslog priority prefix (`<3>`), for standard error on /dev/kmsg:
    /// each record is one write, so one kernel log record.
    Kmsg,
}

struct Logger {
    level: log::LevelFilter,
    style: LogStyle,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        // fuser reports routine events at info; keep them out unless debugging.
        let level = if m.target().starts_with("fuser") && self.level < log::LevelFilter::Debug {
            log::LevelFilter::Warn
        } else {
            self.level
        };
        m.level() <= level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // fuser warns of every request a filesystem leaves to its default answer (ENOSYS);
        // those are expected, and on a root filesystem they would flood the console.
        if r.target().starts_with("fuser")
            && self.level < log::LevelFilter::Debug
            && r.args().to_string().starts_with("[Not Implemented]")
        {
            return;
        }
        let sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        match &*sink {
            Sink::Stderr => {
                let prefix = match self.style {
                    LogStyle::Plain => String::new(),
                    LogStyle::Kmsg => format!("<{}>", severity(r.level())),
                };
                let level = r.level().as_str().to_ascii_lowercase();
                // One write per record: on /dev/kmsg each write is a record of its own.
                let line = format!("{prefix}imgmount[{pid}]: {level}: {}\n", r.args());
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::Syslog { socket, path } => {
                let pri = FACILITY_DAEMON * 8 + severity(r.level());
                let mut msg = format!("<{pri}>imgmount[{pid}]: {}", r.args()).into_bytes();
                msg.truncate(MAX_DATAGRAM);
                let _ = socket.send_to(&msg, path);
            }
        }
    }

    fn flush(&self) {}
}

/// The syslog severity of a log level.
fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Installs the logger, writing to standard error. The level comes from `IMGMOUNT_LOG`
/// (error, warn, info, debug), else `default`.
pub fn init(default: log::LevelFilter, style: LogStyle) {
    let level = match std::env::var("IMGMOUNT_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ => default,
    };
    if log::set_logger(Box::leak(Box::new(Logger { level, style }))).is_ok() {
        log::set_max_level(level);
    }
}

/// From now on, logs go to syslog.
pub fn to_syslog() {
    let path = std::env::var_os("IMGMOUNT_SYSLOG_SOCKET")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Sink::Syslog { socket, path };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_priorities() {
        // daemon.err is <27>, daemon.warning <28>, daemon.info <30>.
        assert_eq!(FACILITY_DAEMON * 8 + severity(log::Level::Error), 27);
        assert_eq!(FACILITY_DAEMON * 8 + severity(log::Level::Warn), 28);
        assert_eq!(FACILITY_DAEMON * 8 + severity(log::Level::Info), 30);
    }
}
