//! Where the deployment state lives in the store and how it changes: every change is one
//! atomic rename.
//!
//! ```text
//! STORE/deployments/state        the state (see super::state)
//! STORE/deployments/state.prev   the state before the last change
//! STORE/deployments/lock         held while a command reads, changes and writes the state
//! STORE/deployments/.tmp-*       a change being written (left by a crash: removed later)
//! ```
//!
//! A change ([`write_state`]): the new state is written to a temporary file and flushed to
//! disk; the current state gets a second name, renamed over `state.prev`; the temporary
//! file is renamed over `state`; the directory is flushed. A power cut at any instant leaves
//! `state` either the old state or the new one, both whole (the kill -9 test in
//! `mounter/tests/deploy_cli.rs` interrupts `imgmount deploy` at random points). `state.prev`
//! is what is left when `state` itself is damaged: [`interpret`] then uses it, and nothing
//! boots a deployment on trial from it.
//!
//! Every file here is opened through [`fsops`]: never through a symbolic link, never
//! blocking on a FIFO, only as a regular file of bounded size.

use std::io::{self, Write};

use imgmount_format::store::fsops::{self, Dir};

use super::state::{DeploymentState, MAX_STATE_BYTES};

pub const STATE_DIR: &str = "deployments";
pub const STATE_FILE: &str = "state";
pub const PREV_FILE: &str = "state.prev";
pub const LOCK_FILE: &str = "lock";
pub const TEMP_PREFIX: &str = ".tmp-";

/// What one of the two state files holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileRead {
    Absent,
    Bytes(Vec<u8>),
    /// It cannot be read at all (a symbolic link, a FIFO, an I/O error): why.
    Unreadable(String),
}

/// The deployment state of a store, as the files say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateRead {
    /// Neither file exists: this store has never had a deployment.
    Missing,
    Ok(DeploymentState),
    /// `state` cannot be used (`problem` says why); `state.prev`, the state before the
    /// last change, can.
    Recovered {
        state: DeploymentState,
        problem: String,
    },
    /// Neither can be used.
    Unreadable {
        problem: String,
    },
}

impl StateRead {
    /// The usable state, if any.
    pub fn state(&self) -> Option<&DeploymentState> {
        match self {
            StateRead::Ok(s) | StateRead::Recovered { state: s, .. } => Some(s),
            _ => None,
        }
    }

    /// What is wrong with the state file, if anything.
    pub fn problem(&self) -> Option<&str> {
        match self {
            StateRead::Recovered { problem, .. } | StateRead::Unreadable { problem } => {
                Some(problem)
            }
            _ => None,
        }
    }
}

fn decode(read: &FileRead, name: &str) -> Result<Option<DeploymentState>, String> {
    match read {
        FileRead::Absent => Ok(None),
        FileRead::Bytes(b) => DeploymentState::decode(b)
            .map(Some)
            .map_err(|e| format!("{name} {e}")),
        FileRead::Unreadable(why) => Err(format!("{name}: {why}")),
    }
}

/// Decides what the two files mean (the rule of [`StateRead`]).
pub fn interpret(state: &FileRead, prev: &FileRead) -> StateRead {
    let problem = match decode(state, STATE_FILE) {
        Ok(Some(s)) => return StateRead::Ok(s),
        Ok(None) if *prev == FileRead::Absent => return StateRead::Missing,
        Ok(None) => format!("{STATE_FILE} is missing"),
        Err(e) => e,
    };
    match decode(prev, PREV_FILE) {
        Ok(Some(s)) => StateRead::Recovered { state: s, problem },
        Ok(None) => StateRead::Unreadable { problem },
        Err(e) => StateRead::Unreadable {
            problem: format!("{problem}; {e}"),
        },
    }
}

fn read_file(dir: &Dir, name: &str) -> FileRead {
    let read = dir.read_file(name, MAX_STATE_BYTES);
    match read {
        Ok(b) => FileRead::Bytes(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileRead::Absent,
        Err(e) => FileRead::Unreadable(e.to_string()),
    }
}

/// The deployment state of the store whose root is `store`.
pub fn read_state(store: &Dir) -> StateRead {
    match store.open_dir_if_exists(STATE_DIR) {
        Ok(None) => StateRead::Missing,
        Ok(Some(dir)) => read_in(&dir),
        Err(e) => StateRead::Unreadable {
            problem: format!("{}: {e}", store.display(STATE_DIR).display()),
        },
    }
}

/// [`read_state`] on the `deployments/` directory itself.
pub fn read_in(dir: &Dir) -> StateRead {
    interpret(&read_file(dir, STATE_FILE), &read_file(dir, PREV_FILE))
}

/// Flushes a directory's entries (after a rename) to disk.
pub fn sync_dir(dir: &Dir) -> io::Result<()> {
    rustix::fs::fsync(dir.fd())?;
    Ok(())
}

/// The `deployments/` directory of a store, created if missing, and its lock, held until
/// the returned file is dropped: every command that changes the state holds it from its
/// read to its write.
pub fn lock_state_dir(store: &Dir) -> io::Result<(Dir, std::fs::File)> {
    let dir = store.create_dir(STATE_DIR)?;
    let lock = dir.open_or_create_file(LOCK_FILE, 0o644)?;
    fsops::lock(&lock, true)?;
    Ok((dir, lock))
}

/// Writes `new` as the state (the caller holds the lock, or is the only one running).
/// `current` is what was read: a damaged `state` is not kept as `state.prev`. Temporary
/// files of changes a crash interrupted are removed first.
pub fn write_state(dir: &Dir, current: &StateRead, new: &DeploymentState) -> io::Result<()> {
    let bytes = new
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the new state {e}")))?;
    for entry in dir.entries()? {
        if entry
            .name
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        {
            dir.remove_all(&entry.name)?;
        }
    }
    let mut tmp = dir.create_temp(&format!("{TEMP_PREFIX}state-"), 0o644)?;
    tmp.file_mut().write_all(&bytes)?;
    tmp.file().sync_all()?;
    if matches!(current, StateRead::Ok(_)) {
        // The current state's second name, then over state.prev: state itself is never
        // missing, and state.prev is always a whole state.
        let prev_tmp = format!("{TEMP_PREFIX}prev-{}", std::process::id());
        dir.remove_file(&prev_tmp)?;
        if dir.link_noclobber(STATE_FILE, dir, &prev_tmp)? {
            dir.rename(&prev_tmp, dir, PREV_FILE)?;
        }
    }
    tmp.persist(dir, STATE_FILE)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::state::tests::sample;

    #[test]
    fn reads_what_it_writes_and_keeps_the_previous_state() {
        let t = tempfile::tempdir().unwrap();
        let store = Dir::open(t.path()).unwrap();
        assert_eq!(read_state(&store), StateRead::Missing);
        let dir = store.create_dir(STATE_DIR).unwrap();
        let first = sample();
        write_state(&dir, &StateRead::Missing, &first).unwrap();
        assert_eq!(read_state(&store), StateRead::Ok(first.clone()));
        let mut second = first.clone();
        second.generation += 1;
        second.default = Some(1);
        write_state(&dir, &StateRead::Ok(first.clone()), &second).unwrap();
        assert_eq!(read_state(&store), StateRead::Ok(second.clone()));
        assert_eq!(
            DeploymentState::decode(
                &std::fs::read(t.path().join("deployments/state.prev")).unwrap()
            )
            .unwrap(),
            first
        );
        // A damaged state: the previous one is used, and is not replaced by the damage.
        std::fs::write(t.path().join("deployments/state"), b"garbage").unwrap();
        let read = read_state(&store);
        assert!(
            matches!(&read, StateRead::Recovered { state, problem } if *state == first && problem.contains("magic")),
            "{read:?}"
        );
        let mut third = first.clone();
        third.generation = 99;
        write_state(&dir, &read, &third).unwrap();
        assert_eq!(read_state(&store), StateRead::Ok(third));
        assert_eq!(
            DeploymentState::decode(
                &std::fs::read(t.path().join("deployments/state.prev")).unwrap()
            )
            .unwrap(),
            first,
            "the damaged file was not kept"
        );
        let mut left: Vec<_> = dir.entries().unwrap().into_iter().map(|e| e.name).collect();
        left.sort();
        assert_eq!(left, ["state", "state.prev"], "no temporary files left");
    }

    #[test]
    fn the_rule_of_the_two_files() {
        let good = FileRead::Bytes(sample().encode().unwrap());
        let bad = FileRead::Bytes(b"IMGDEPLS".to_vec());
        let gone = FileRead::Unreadable("is a FIFO".into());
        assert!(matches!(
            interpret(&good, &FileRead::Absent),
            StateRead::Ok(_)
        ));
        assert!(matches!(interpret(&good, &bad), StateRead::Ok(_)));
        assert_eq!(
            interpret(&FileRead::Absent, &FileRead::Absent),
            StateRead::Missing
        );
        assert!(matches!(
            interpret(&bad, &good),
            StateRead::Recovered { .. }
        ));
        assert!(matches!(
            interpret(&gone, &good),
            StateRead::Recovered { .. }
        ));
        assert!(
            matches!(interpret(&FileRead::Absent, &good), StateRead::Recovered { ref problem, .. } if problem.contains("missing")),
            "a removed state is not a fresh store"
        );
        let r = interpret(&bad, &gone);
        assert!(
            matches!(&r, StateRead::Unreadable { problem } if problem.contains("truncated") && problem.contains("FIFO")),
            "{r:?}"
        );
        assert!(matches!(
            interpret(&bad, &FileRead::Absent),
            StateRead::Unreadable { .. }
        ));
    }

    #[test]
    fn a_symlinked_state_directory_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.path().join(STATE_DIR)).unwrap();
        let store = Dir::open(t.path()).unwrap();
        assert!(matches!(read_state(&store), StateRead::Unreadable { .. }));
        assert!(store.create_dir(STATE_DIR).is_err());
    }
}
