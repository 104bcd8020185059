//! Where the mount daemon's log goes: standard error in the foreground (or the
//! `--log-file` it was given), syslog once it has detached without one, so a refused read
//! reaches the journal (or syslog) instead of /dev/null.
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

struct Logger {
    level: log::LevelFilter,
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
        let sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        match &*sink {
            Sink::Stderr => {
                let level = r.level().as_str().to_ascii_lowercase();
                let _ = writeln!(std::io::stderr(), "imgmount[{pid}]: {level}: {}", r.args());
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
/// (error, warn, info, debug); by default info when `verbose`, else warn.
pub fn init(verbose: bool) {
    let level = match std::env::var("IMGMOUNT_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ if verbose => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(Box::leak(Box::new(Logger { level }))).is_ok() {
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
