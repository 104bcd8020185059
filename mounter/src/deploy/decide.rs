//! Which deployment a boot mounts, and what it records first: systemd's automatic boot
//! assessment applied to the deployments in the store.
//!
//! [`decide_boot`] is a plain function of the state, the command line's pin and a
//! `verdict` on each image (pinned, signed by a trusted key, or refused, and whether its
//! file matches its digest), so every case is tested without a machine:
//!
//! 1. The default deployment (the one `deploy` or `rollback` chose) boots if it is good,
//!    or pending with tries left: one try is taken, and the state recording it is
//!    written *before* the root is mounted, so a boot that never completes still counts.
//!    A pending deployment with no try left was never blessed: it is marked bad.
//! 2. Otherwise the newest good deployment boots (and becomes the default).
//! 3. Otherwise the image the command line pins boots, as without deployments.
//!
//! A deployment whose image is refused (unsigned, signed by an untrusted key, badly signed,
//! its file missing or not matching its digest) is marked bad and the next candidate tried.
//! When the state cannot be written (it was recovered from `state.prev`), nothing is marked
//! and no pending deployment boots: a try that cannot be counted is not taken.

use imgmount_format::verity::Digest;

use super::commit::StateRead;
use super::state::{DeploymentState, Status};

/// Why an image may boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedBy {
    /// Its digest is the one the command line pins.
    Pin,
    /// A trusted key signed it (the key, as messages name it).
    Key(String),
}

impl std::fmt::Display for TrustedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrustedBy::Pin => f.write_str("pinned by the kernel command line"),
            TrustedBy::Key(k) => write!(f, "signed by the trusted key {k}"),
        }
    }
}

/// What the boot makes of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Trusted(TrustedBy),
    Refused(String),
}

/// What boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    Deployment(u32),
    /// The image the command line pins, as a boot without deployments.
    Pinned,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootDecision {
    /// None: nothing may boot.
    pub target: Option<BootTarget>,
    pub trusted_by: Option<TrustedBy>,
    /// The state to write before mounting (None: unchanged).
    pub new_state: Option<DeploymentState>,
    /// What happened, for the console.
    pub notes: Vec<String>,
}

/// What a boot knows.
pub struct BootInput<'a> {
    pub state: &'a StateRead,
    pub pin: &'a Digest,
    /// False under `imgmount.deployments=off`: the state is ignored.
    pub use_deployments: bool,
    pub now: u64,
}

fn mark_bad(st: &mut DeploymentState, id: u32, reason: String, now: u64) {
    if let Some(d) = st.get_mut(id) {
        d.status = Status::Bad;
        d.note = super::state::clean_note(&reason);
        d.changed_at = now;
    }
}

/// The decision (see the module comment). `verdict` is asked at most once per image.
pub fn decide_boot(
    input: &BootInput<'_>,
    verdict: &mut dyn FnMut(&Digest) -> Verdict,
) -> BootDecision {
    let mut notes = Vec::new();
    let (state, can_write) = match (input.use_deployments, input.state) {
        (_, StateRead::Missing) => (None, false),
        (false, _) => {
            notes.push(
                "imgmount.deployments=off: the deployments are left alone; booting the pinned image"
                    .to_owned(),
            );
            (None, false)
        }
        (true, StateRead::Ok(s)) => (Some(s), true),
        (true, StateRead::Recovered { state, problem }) => {
            notes.push(format!(
                "the deployment state is damaged ({problem}); using the state before the \
                 last change, read-only: only good deployments boot"
            ));
            (Some(state), false)
        }
        (true, StateRead::Unreadable { problem }) => {
            notes.push(format!(
                "the deployment state cannot be used ({problem}); booting the image the \
                 command line pins"
            ));
            (None, false)
        }
    };
    let mut cache: Vec<(Digest, Verdict)> = Vec::new();
    let mut judge = |d: &Digest| -> Verdict {
        if let Some((_, v)) = cache.iter().find(|(c, _)| c == d) {
            return v.clone();
        }
        let v = verdict(d);
        cache.push((*d, v.clone()));
        v
    };
    if let Some(orig) = state {
        let mut st = orig.clone();
        let mut changed = false;
        let mut chosen: Option<(u32, TrustedBy)> = None;
        let mut tried = Vec::new();
        if let Some(id) = st.default
            && let Some(d) = st.get(id).cloned()
        {
            tried.push(id);
            match d.status {
                Status::Pending { tries_left: 0 } => {
                    let mut why = format!(
                        "not blessed after {} {}",
                        d.tries,
                        if d.tries == 1 { "try" } else { "tries" }
                    );
                    if !d.note.is_empty() {
                        why = format!("{why}; the last one: {}", d.note);
                    }
                    notes.push(format!("{} is out of tries: {why}", d.describe()));
                    if can_write {
                        mark_bad(&mut st, id, why, input.now);
                        changed = true;
                    }
                }
                Status::Pending { tries_left } if !can_write => {
                    notes.push(format!(
                        "{} is on trial ({tries_left} tries left), but a try cannot be \
                         recorded: not booting it",
                        d.describe()
                    ));
                }
                Status::Pending { tries_left } => match judge(&d.image) {
                    Verdict::Trusted(by) => {
                        let left = tries_left - 1;
                        notes.push(format!(
                            "{} is on trial: try {} of {} ({left} left after this one)",
                            d.describe(),
                            d.tries - left,
                            d.tries
                        ));
                        if let Some(m) = st.get_mut(id) {
                            m.status = Status::Pending { tries_left: left };
                            m.boots = m.boots.saturating_add(1);
                        }
                        changed = true;
                        chosen = Some((id, by));
                    }
                    Verdict::Refused(why) => {
                        notes.push(format!("{} is refused: {why}", d.describe()));
                        mark_bad(&mut st, id, format!("refused at boot: {why}"), input.now);
                        changed = true;
                    }
                },
                Status::Good => match judge(&d.image) {
                    Verdict::Trusted(by) => chosen = Some((id, by)),
                    Verdict::Refused(why) => {
                        notes.push(format!("{} is refused: {why}", d.describe()));
                        if can_write {
                            mark_bad(&mut st, id, format!("refused at boot: {why}"), input.now);
                            changed = true;
                        }
                    }
                },
                Status::Bad => notes.push(format!(
                    "{} is bad ({}): not booting it",
                    d.describe(),
                    d.note
                )),
            }
        }
        if chosen.is_none() {
            let goods: Vec<_> = st
                .deployments
                .iter()
                .rev()
                .filter(|d| d.status == Status::Good && !tried.contains(&d.id))
                .cloned()
                .collect();
            for d in goods {
                match judge(&d.image) {
                    Verdict::Trusted(by) => {
                        notes.push(format!("falling back to the last good {}", d.describe()));
                        chosen = Some((d.id, by));
                        break;
                    }
                    Verdict::Refused(why) => {
                        notes.push(format!("{} is refused: {why}", d.describe()));
                        if can_write {
                            mark_bad(&mut st, d.id, format!("refused at boot: {why}"), input.now);
                            changed = true;
                        }
                    }
                }
            }
            if let Some((id, _)) = &chosen
                && can_write
                && st.default != Some(*id)
            {
                st.default = Some(*id);
                changed = true;
            }
        }
        let new_state = (changed && can_write).then(|| {
            st.generation += 1;
            st
        });
        if let Some((id, by)) = chosen {
            return BootDecision {
                target: Some(BootTarget::Deployment(id)),
                trusted_by: Some(by),
                new_state,
                notes,
            };
        }
        notes
            .push("no deployment can boot: falling back to the image the command line pins".into());
        return pinned(input.pin, &mut judge, new_state, notes);
    }
    pinned(input.pin, &mut judge, None, notes)
}

fn pinned(
    pin: &Digest,
    judge: &mut dyn FnMut(&Digest) -> Verdict,
    new_state: Option<DeploymentState>,
    mut notes: Vec<String>,
) -> BootDecision {
    match judge(pin) {
        Verdict::Trusted(by) => BootDecision {
            target: Some(BootTarget::Pinned),
            trusted_by: Some(by),
            new_state,
            notes,
        },
        Verdict::Refused(why) => {
            notes.push(format!("the pinned image {pin} cannot boot: {why}"));
            BootDecision {
                target: None,
                trusted_by: None,
                new_state,
                notes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::state::tests::{deployment, image};
    use std::collections::HashMap;

    fn state(ds: Vec<super::super::state::Deployment>, default: Option<u32>) -> DeploymentState {
        let next_id = ds.iter().map(|d| d.id).max().unwrap_or(0) + 1;
        DeploymentState {
            generation: 1,
            next_id,
            keep: 2,
            default,
            deployments: ds,
        }
    }

    /// Image 1 is the pin, the others are signed by a trusted key; those in `refused` are
    /// refused (unsigned, or a damaged file).
    fn run(read: &StateRead, refused: &[u8]) -> (BootDecision, Vec<Digest>) {
        let refused: HashMap<Digest, ()> = refused.iter().map(|n| (image(*n), ())).collect();
        let mut asked = Vec::new();
        let pin = image(1);
        let d = decide_boot(
            &BootInput {
                state: read,
                pin: &pin,
                use_deployments: true,
                now: 42,
            },
            &mut |d| {
                asked.push(*d);
                if refused.contains_key(d) {
                    Verdict::Refused("not signed".into())
                } else if *d == pin {
                    Verdict::Trusted(TrustedBy::Pin)
                } else {
                    Verdict::Trusted(TrustedBy::Key("release".into()))
                }
            },
        );
        (d, asked)
    }

    fn ok(s: DeploymentState) -> StateRead {
        StateRead::Ok(s)
    }

    #[test]
    fn without_deployments_the_pin_boots() {
        let (d, _) = run(&StateRead::Missing, &[]);
        assert_eq!(d.target, Some(BootTarget::Pinned));
        assert_eq!(d.trusted_by, Some(TrustedBy::Pin));
        assert!(d.new_state.is_none() && d.notes.is_empty());
        let (d, _) = run(
            &StateRead::Unreadable {
                problem: "bad magic".into(),
            },
            &[],
        );
        assert_eq!(d.target, Some(BootTarget::Pinned));
        assert!(d.new_state.is_none());
        assert!(d.notes[0].contains("bad magic"), "{:?}", d.notes);
        // The pin itself refused (its file damaged, say): nothing boots.
        let (d, _) = run(&StateRead::Missing, &[1]);
        assert_eq!(d.target, None);
        assert!(d.notes.last().unwrap().contains("cannot boot"));
    }

    #[test]
    fn a_pending_default_takes_a_try_before_it_boots() {
        let s = state(
            vec![
                deployment(1, 1, Status::Good),
                deployment(2, 2, Status::Pending { tries_left: 3 }),
            ],
            Some(2),
        );
        let (d, _) = run(&ok(s.clone()), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(2)));
        let new = d.new_state.unwrap();
        assert_eq!(
            new.get(2).unwrap().status,
            Status::Pending { tries_left: 2 }
        );
        assert_eq!(new.get(2).unwrap().boots, 1);
        assert_eq!(new.generation, s.generation + 1);
        assert!(d.notes[0].contains("try 1 of 3"), "{:?}", d.notes);
        // ... down to the last try, then the last good one, and the pending one is bad.
        let mut cur = new;
        for want_left in [1, 0] {
            let (d, _) = run(&ok(cur.clone()), &[]);
            assert_eq!(d.target, Some(BootTarget::Deployment(2)));
            cur = d.new_state.unwrap();
            assert_eq!(
                cur.get(2).unwrap().status,
                Status::Pending {
                    tries_left: want_left
                }
            );
        }
        cur.get_mut(2).unwrap().note = "required health check 50-app failed".into();
        let (d, _) = run(&ok(cur.clone()), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(1)));
        let after = d.new_state.unwrap();
        let bad = after.get(2).unwrap();
        assert_eq!(bad.status, Status::Bad);
        assert_eq!(
            bad.note,
            "not blessed after 3 tries; the last one: required health check 50-app failed"
        );
        assert_eq!(after.default, Some(1), "the good one is the default again");
        // And from then on it simply boots, writing nothing.
        let (d, _) = run(&ok(after), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(1)));
        assert!(d.new_state.is_none());
    }

    #[test]
    fn a_good_default_boots_without_writing() {
        let s = state(
            vec![
                deployment(1, 1, Status::Good),
                deployment(2, 2, Status::Good),
            ],
            Some(2),
        );
        let (d, asked) = run(&ok(s), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(2)));
        assert_eq!(d.trusted_by, Some(TrustedBy::Key("release".into())));
        assert!(d.new_state.is_none());
        assert_eq!(asked, [image(2)], "only what boots is checked");
    }

    #[test]
    fn refused_images_are_marked_bad_and_the_previous_good_boots() {
        for status in [Status::Pending { tries_left: 3 }, Status::Good] {
            let s = state(
                vec![deployment(1, 1, Status::Good), deployment(2, 4, status)],
                Some(2),
            );
            let (d, _) = run(&ok(s), &[4]);
            assert_eq!(d.target, Some(BootTarget::Deployment(1)), "{status:?}");
            let new = d.new_state.unwrap();
            let v4 = new.get(2).unwrap();
            assert_eq!(v4.status, Status::Bad);
            assert_eq!(v4.note, "refused at boot: not signed");
            assert_eq!(new.default, Some(1));
        }
        // Every deployment refused: the pin.
        let s = state(
            vec![
                deployment(1, 5, Status::Good),
                deployment(2, 4, Status::Pending { tries_left: 1 }),
            ],
            Some(2),
        );
        let (d, _) = run(&ok(s), &[4, 5]);
        assert_eq!(d.target, Some(BootTarget::Pinned));
        let new = d.new_state.unwrap();
        assert!(new.deployments.iter().all(|d| d.status == Status::Bad));
    }

    #[test]
    fn bad_and_missing_defaults_fall_back_to_the_newest_good() {
        let mut bad = deployment(3, 3, Status::Bad);
        bad.note = "marked bad by hand".into();
        let s = state(
            vec![
                deployment(1, 1, Status::Good),
                deployment(2, 2, Status::Good),
                bad,
            ],
            Some(3),
        );
        let (d, _) = run(&ok(s.clone()), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(2)));
        assert_eq!(d.new_state.unwrap().default, Some(2));
        let mut none = s;
        none.default = None;
        let (d, _) = run(&ok(none), &[]);
        assert_eq!(d.target, Some(BootTarget::Deployment(2)));
        // A good one refused on the way is marked too.
        let s = state(
            vec![
                deployment(1, 1, Status::Good),
                deployment(2, 2, Status::Good),
            ],
            None,
        );
        let (d, _) = run(&ok(s), &[2]);
        assert_eq!(d.target, Some(BootTarget::Deployment(1)));
        assert_eq!(d.new_state.unwrap().get(2).unwrap().status, Status::Bad);
    }

    #[test]
    fn a_recovered_state_is_only_read() {
        let s = state(
            vec![
                deployment(1, 1, Status::Good),
                deployment(2, 2, Status::Pending { tries_left: 2 }),
            ],
            Some(2),
        );
        let read = StateRead::Recovered {
            state: s.clone(),
            problem: "fails its checksum".into(),
        };
        let (d, _) = run(&read, &[]);
        assert_eq!(
            d.target,
            Some(BootTarget::Deployment(1)),
            "no uncounted try"
        );
        assert!(d.new_state.is_none());
        assert!(d.notes.iter().any(|n| n.contains("fails its checksum")));
        let (d, _) = run(&read, &[1, 2]);
        assert_eq!(d.target, None, "the good one refused, the pin too");
        assert!(d.new_state.is_none(), "nothing is marked");
    }

    #[test]
    fn deployments_off_boots_the_pin_and_writes_nothing() {
        let s = state(vec![deployment(1, 3, Status::Good)], Some(1));
        let pin = image(1);
        let d = decide_boot(
            &BootInput {
                state: &ok(s),
                pin: &pin,
                use_deployments: false,
                now: 0,
            },
            &mut |_| Verdict::Trusted(TrustedBy::Pin),
        );
        assert_eq!(d.target, Some(BootTarget::Pinned));
        assert!(d.new_state.is_none());
    }

    #[test]
    fn each_image_is_judged_once() {
        let s = state(
            vec![
                deployment(1, 7, Status::Good),
                deployment(2, 7, Status::Good),
                deployment(3, 7, Status::Pending { tries_left: 1 }),
            ],
            Some(3),
        );
        let (d, asked) = run(&ok(s), &[7]);
        assert_eq!(d.target, Some(BootTarget::Pinned));
        assert_eq!(asked, [image(7), image(1)]);
    }
}
