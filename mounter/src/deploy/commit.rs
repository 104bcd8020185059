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
//! A change ([`commit_steps`]): the new state is written to a temporary file and flushed to
//! disk; the current state gets a second name, renamed over `state.prev`; the temporary
//! file is renamed over `state`; the directory is flushed. A power cut at any instant leaves
//! `state` either the old state or the new one, both whole (the model test in
//! `super::model_tests` checks every crash point of every change). `state.prev` is what
//! is left when `state` itself is damaged: [`interpret`] then uses it, and nothing boots
//! a deployment on trial from it.
//!
//! The steps are data, carried out by [`apply`] on the real directory and by the model test
//! on a simulated one, so both follow the same protocol.

use std::io;

use super::fsio::AnchoredDir;
use super::state::{DeploymentState, MAX_STATE_BYTES, StateError};

pub const STATE_DIR: &str = "deployments";
pub const STATE_FILE: &str = "state";
pub const PREV_FILE: &str = "state.prev";
pub const LOCK_FILE: &str = "lock";
pub const TEMP_PREFIX: &str = ".tmp-";

/// One step of a change, on the `deployments/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsStep {
    /// Creates `name` (which must not exist) holding `bytes`, and flushes it to disk.
    WriteSynced { name: String, bytes: Vec<u8> },
    /// Gives the file `from` the second name `to` (which must not exist).
    Link { from: String, to: String },
    /// Renames `from` over `to`.
    Rename { from: String, to: String },
    /// Flushes the directory (its renames) to disk.
    SyncDir,
}

/// The steps that replace the state with `new`. `keep_prev` says whether the current
/// `state` is readable (and so worth keeping as `state.prev`); `unique` makes the temporary
/// names this change's own.
pub fn commit_steps(
    new: &DeploymentState,
    keep_prev: bool,
    unique: &str,
) -> Result<Vec<FsStep>, StateError> {
    let tmp = format!("{TEMP_PREFIX}state-{unique}");
    let mut steps = vec![FsStep::WriteSynced {
        name: tmp.clone(),
        bytes: new.encode()?,
    }];
    if keep_prev {
        let prev_tmp = format!("{TEMP_PREFIX}prev-{unique}");
        steps.push(FsStep::Link {
            from: STATE_FILE.into(),
            to: prev_tmp.clone(),
        });
        steps.push(FsStep::Rename {
            from: prev_tmp,
            to: PREV_FILE.into(),
        });
    }
    steps.push(FsStep::Rename {
        from: tmp,
        to: STATE_FILE.into(),
    });
    steps.push(FsStep::SyncDir);
    Ok(steps)
}

/// Carries the steps out on the real directory.
pub fn apply(dir: &AnchoredDir, steps: &[FsStep]) -> io::Result<()> {
    for step in steps {
        match step {
            FsStep::WriteSynced { name, bytes } => dir.write_new_synced(name, bytes, 0o644)?,
            FsStep::Link { from, to } => dir.link(from, to)?,
            FsStep::Rename { from, to } => dir.rename(from, to)?,
            FsStep::SyncDir => dir.sync()?,
        }
    }
    Ok(())
}

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
    Unreadable { problem: String },
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

fn read_file(dir: &AnchoredDir, name: &str) -> FileRead {
    match dir.read(name, MAX_STATE_BYTES) {
        Ok(Some(b)) => FileRead::Bytes(b),
        Ok(None) => FileRead::Absent,
        Err(e) => FileRead::Unreadable(e.to_string()),
    }
}

/// The deployment state of the store whose directory is `store`.
pub fn read_state(store: &AnchoredDir) -> StateRead {
    match store.open_sub(STATE_DIR) {
        Ok(None) => StateRead::Missing,
        Ok(Some(dir)) => read_in(&dir),
        Err(e) => StateRead::Unreadable {
            problem: e.to_string(),
        },
    }
}

/// [`read_state`] on the `deployments/` directory itself.
pub fn read_in(dir: &AnchoredDir) -> StateRead {
    interpret(&read_file(dir, STATE_FILE), &read_file(dir, PREV_FILE))
}

/// A name no other change uses: the process and a counter.
pub fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Writes `new` as the state (the caller holds the lock, or is the only one running).
/// `current` is what was read: a damaged `state` is not kept as `state.prev`. Temporary
/// files of changes a crash interrupted are removed first.
pub fn write_state(dir: &AnchoredDir, current: &StateRead, new: &DeploymentState) -> io::Result<()> {
    for name in dir.names()? {
        if let Some(n) = name.to_str()
            && n.starts_with(TEMP_PREFIX)
        {
            dir.remove_file(n)?;
        }
    }
    let keep_prev = matches!(current, StateRead::Ok(_));
    let steps = commit_steps(new, keep_prev, &unique_name())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the new state {e}")))?;
    apply(dir, &steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::state::tests::sample;

    #[test]
    fn reads_what_it_writes_and_keeps_the_previous_state() {
        let t = tempfile::tempdir().unwrap();
        let store = AnchoredDir::open(t.path()).unwrap();
        assert_eq!(read_state(&store), StateRead::Missing);
        let dir = store.create_sub(STATE_DIR).unwrap();
        let first = sample();
        write_state(&dir, &StateRead::Missing, &first).unwrap();
        assert_eq!(read_state(&store), StateRead::Ok(first.clone()));
        let mut second = first.clone();
        second.generation += 1;
        second.default = Some(1);
        write_state(&dir, &StateRead::Ok(first.clone()), &second).unwrap();
        assert_eq!(read_state(&store), StateRead::Ok(second.clone()));
        assert_eq!(
            DeploymentState::decode(&std::fs::read(t.path().join("deployments/state.prev")).unwrap())
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
            DeploymentState::decode(&std::fs::read(t.path().join("deployments/state.prev")).unwrap())
                .unwrap(),
            first,
            "the damaged file was not kept"
        );
        let mut left: Vec<_> = dir.names().unwrap();
        left.sort();
        assert_eq!(left, ["state", "state.prev"], "no temporary files left");
    }

    #[test]
    fn the_rule_of_the_two_files() {
        let good = FileRead::Bytes(sample().encode().unwrap());
        let bad = FileRead::Bytes(b"IMGDEPLS".to_vec());
        let gone = FileRead::Unreadable("is a FIFO".into());
        assert!(matches!(interpret(&good, &FileRead::Absent), StateRead::Ok(_)));
        assert!(matches!(interpret(&good, &bad), StateRead::Ok(_)));
        assert_eq!(interpret(&FileRead::Absent, &FileRead::Absent), StateRead::Missing);
        assert!(matches!(interpret(&bad, &good), StateRead::Recovered { .. }));
        assert!(matches!(interpret(&gone, &good), StateRead::Recovered { .. }));
        assert!(
            matches!(interpret(&FileRead::Absent, &good), StateRead::Recovered { ref problem, .. } if problem.contains("missing")),
            "a removed state is not a fresh store"
        );
        let r = interpret(&bad, &gone);
        assert!(
            matches!(&r, StateRead::Unreadable { problem } if problem.contains("truncated") && problem.contains("FIFO")),
            "{r:?}"
        );
        assert!(matches!(interpret(&bad, &FileRead::Absent), StateRead::Unreadable { .. }));
    }

    #[test]
    fn a_symlinked_state_directory_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.path().join(STATE_DIR)).unwrap();
        let store = AnchoredDir::open(t.path()).unwrap();
        assert!(matches!(read_state(&store), StateRead::Unreadable { .. }));
        assert!(store.create_sub(STATE_DIR).is_err());
    }
}
