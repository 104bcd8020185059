//! The changes the booted system makes to the deployment state, as plain functions:
//! `deploy`, `rollback`, `bless`, `mark-bad`, and a failed health check. Each takes a
//! state and returns the next one (its generation one higher) or says why not; the
//! commands around them only read, lock and write.

use imgmount_format::verity::Digest;

use super::state::{
    Deployment, DeploymentState, EtcFrom, MAX_DEPLOYMENTS, MAX_TRIES, Status, clean_note,
};

/// What the running system was booted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Booted {
    Deployment(u32),
    /// The image the command line pins, not as a deployment (etc changes in `etc/<hex>`).
    Pinned(Digest),
    /// Not booted from this store (a build machine preparing a disk).
    Unknown,
}

impl Booted {
    /// The deployment this boot is: itself, or for a boot of the pinned image the good
    /// deployment of that image (`deploy` adopts it as one).
    pub fn deployment_in(&self, st: &DeploymentState) -> Option<u32> {
        match *self {
            Booted::Deployment(id) => st.get(id).map(|d| d.id),
            Booted::Pinned(image) => st
                .deployments
                .iter()
                .rev()
                .find(|d| d.image == image && d.status == Status::Good)
                .map(|d| d.id),
            Booted::Unknown => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    BadArgument(String),
}

fn refused(msg: impl Into<String>) -> OpError {
    OpError::Refused(msg.into())
}

/// What `deploy` asks for.
#[derive(Clone, Debug)]
pub struct DeployRequest {
    pub image: Digest,
    pub tag: Option<String>,
    pub tries: u8,
    /// A new limit of deployments kept, if given.
    pub keep: Option<u8>,
    pub now: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployOutcome {
    /// A new deployment is the next boot.
    Staged {
        id: u32,
        /// The booted image adopted as a deployment (a boot pinned by the command line).
        adopted: Option<u32>,
        pruned: Vec<Deployment>,
    },
    /// The image is the booted one: that deployment is the next boot again.
    AlreadyBooted { id: u32 },
}

/// The booted deployment's id, adopting a pinned boot as a good deployment.
fn booted_id(
    st: &mut DeploymentState,
    booted: &Booted,
    now: u64,
) -> Result<(Option<u32>, Option<u32>), OpError> {
    match *booted {
        Booted::Deployment(id) => {
            if st.get(id).is_none() {
                return Err(refused(format!(
                    "the booted deployment {id} is not in the deployment state (was the \
                     state changed by hand?)"
                )));
            }
            Ok((Some(id), None))
        }
        Booted::Pinned(image) => {
            if let Some(id) = booted.deployment_in(st) {
                return Ok((Some(id), None));
            }
            let id = take_id(st)?;
            st.deployments.push(Deployment {
                id,
                image,
                tag: None,
                deployed_at: now,
                tries: 1,
                status: Status::Good,
                boots: 0,
                changed_at: now,
                etc_from: EtcFrom::Image(image),
                note: "booted from the pinned image before the first deployment".into(),
            });
            Ok((Some(id), Some(id)))
        }
        Booted::Unknown => Ok((None, None)),
    }
}

fn take_id(st: &mut DeploymentState) -> Result<u32, OpError> {
    let id = st.next_id;
    st.next_id = id
        .checked_add(1)
        .ok_or_else(|| refused("no deployment ids are left"))?;
    Ok(id)
}

/// `imgmount deploy`: `req.image` is the next boot, tried `req.tries` times; the booted
/// deployment stays as the rollback; at most `keep` deployments are kept, always the new
/// one, the booted one and the newest good one.
pub fn deploy(
    current: Option<&DeploymentState>,
    booted: &Booted,
    req: &DeployRequest,
) -> Result<(DeploymentState, DeployOutcome), OpError> {
    if req.tries == 0 || req.tries > MAX_TRIES {
        return Err(OpError::BadArgument(format!(
            "--tries must be 1 to {MAX_TRIES}, not {}",
            req.tries
        )));
    }
    let mut st = current.cloned().unwrap_or_else(DeploymentState::empty);
    if let Some(k) = req.keep {
        if !(2..=MAX_DEPLOYMENTS).contains(&usize::from(k)) {
            return Err(OpError::BadArgument(format!(
                "--keep must be 2 to {MAX_DEPLOYMENTS} (the booted deployment and the new \
                 one at least), not {k}"
            )));
        }
        st.keep = k;
    }
    st.generation += 1;
    let (booted_id, adopted) = booted_id(&mut st, booted, req.now)?;
    if let Some(b) = booted_id
        && st.get(b).is_some_and(|d| d.image == req.image)
    {
        st.default = Some(b);
        return Ok((st, DeployOutcome::AlreadyBooted { id: b }));
    }
    let etc_from = match *booted {
        Booted::Deployment(id) => EtcFrom::Deployment(id),
        Booted::Pinned(d) => EtcFrom::Image(d),
        Booted::Unknown => EtcFrom::Nothing,
    };
    let id = take_id(&mut st)?;
    st.deployments.push(Deployment {
        id,
        image: req.image,
        tag: req.tag.clone(),
        deployed_at: req.now,
        tries: req.tries,
        status: Status::Pending {
            tries_left: req.tries,
        },
        boots: 0,
        changed_at: req.now,
        etc_from,
        note: String::new(),
    });
    st.default = Some(id);
    let pruned = prune(&mut st, id, booted_id)?;
    Ok((
        st,
        DeployOutcome::Staged {
            id,
            adopted,
            pruned,
        },
    ))
}

/// Keeps at most `st.keep` deployments: the new one, the booted one and, when the booted
/// one is not good (on trial, or none), the newest good one; then good ones before others,
/// newer before older. Returns what was removed.
fn prune(
    st: &mut DeploymentState,
    new: u32,
    booted: Option<u32>,
) -> Result<Vec<Deployment>, OpError> {
    let mut keep: Vec<u32> = vec![new];
    keep.extend(booted);
    let booted_good = booted
        .and_then(|b| st.get(b))
        .is_some_and(|d| d.status == Status::Good);
    let newest_good = st.newest_good_except(&[new]).map(|d| d.id);
    if !booted_good
        && let Some(g) = newest_good
        && !keep.contains(&g)
    {
        keep.push(g);
    }
    let limit = usize::from(st.keep);
    if keep.len() > limit {
        let b = booted
            .and_then(|b| st.get(b))
            .map(|d| d.describe())
            .unwrap_or_default();
        let g = newest_good
            .and_then(|g| st.get(g))
            .map(|d| d.describe())
            .unwrap_or_default();
        return Err(refused(format!(
            "the booted {b} is not blessed yet, and keeping it, the last good {g} and the \
             new deployment takes {} of the {limit} kept: bless or roll back the booted \
             deployment first, or deploy with --keep {}",
            keep.len(),
            keep.len()
        )));
    }
    let mut rest: Vec<&Deployment> = st
        .deployments
        .iter()
        .filter(|d| !keep.contains(&d.id))
        .collect();
    rest.sort_by_key(|d| (d.status != Status::Good, std::cmp::Reverse(d.id)));
    let extra: Vec<u32> = rest.iter().take(limit - keep.len()).map(|d| d.id).collect();
    keep.extend(extra);
    let (kept, pruned): (Vec<_>, Vec<_>) =
        st.deployments.drain(..).partition(|d| keep.contains(&d.id));
    st.deployments = kept;
    Ok(pruned)
}

/// `imgmount rollback`: the newest good deployment other than the next boot becomes the
/// next boot. Returns the new state and the deployment chosen.
pub fn rollback(current: &DeploymentState) -> Result<(DeploymentState, u32), OpError> {
    let target = current.rollback_target().map(|d| d.id).ok_or_else(|| {
        refused("there is no other good deployment to roll back to (see imgmount status)")
    })?;
    let mut st = current.clone();
    st.default = Some(target);
    st.generation += 1;
    Ok((st, target))
}

/// `imgmount bless`: the booted deployment is good. None if it already was.
pub fn bless(
    current: &DeploymentState,
    id: u32,
    now: u64,
) -> Result<Option<DeploymentState>, OpError> {
    let d = current
        .get(id)
        .ok_or_else(|| refused(format!("deployment {id} is not in the deployment state")))?;
    match d.status {
        Status::Good => Ok(None),
        Status::Bad => Err(refused(format!(
            "{} was marked bad ({}); it is not blessed",
            d.describe(),
            d.note
        ))),
        Status::Pending { .. } => {
            let mut st = current.clone();
            if let Some(m) = st.get_mut(id) {
                m.status = Status::Good;
                m.note = String::new();
                m.changed_at = now;
            }
            st.generation += 1;
            Ok(Some(st))
        }
    }
}

/// Marks a deployment bad; if it was the next boot, the newest good one is.
fn set_bad(st: &mut DeploymentState, id: u32, reason: &str, now: u64) {
    if let Some(m) = st.get_mut(id) {
        m.status = Status::Bad;
        m.note = clean_note(reason);
        m.changed_at = now;
    }
    if st.default == Some(id) {
        st.default = st.newest_good_except(&[id]).map(|d| d.id).or(st.default);
    }
}

/// `imgmount mark-bad`: never boot this deployment again.
pub fn mark_bad(
    current: &DeploymentState,
    id: u32,
    reason: &str,
    now: u64,
) -> Result<DeploymentState, OpError> {
    if current.get(id).is_none() {
        return Err(refused(format!(
            "deployment {id} is not in the deployment state"
        )));
    }
    let mut st = current.clone();
    set_bad(&mut st, id, reason, now);
    st.generation += 1;
    Ok(st)
}

/// What to do after a required health check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The deployment is on trial: reboot, into its next try or the last good deployment.
    Reboot,
    /// It was blessed before (or is no deployment): the failure is reported, and the
    /// machine stays up.
    Stay,
}

/// A required health check of the booted deployment failed with `reason`: a pending
/// deployment records it (and is bad if that was its last try) and the machine reboots.
pub fn health_check_failed(
    current: &DeploymentState,
    id: u32,
    reason: &str,
    now: u64,
) -> (Option<DeploymentState>, AfterFailure) {
    let Some(d) = current.get(id) else {
        return (None, AfterFailure::Stay);
    };
    match d.status {
        Status::Good => (None, AfterFailure::Stay),
        Status::Bad => (None, AfterFailure::Reboot),
        Status::Pending { tries_left } => {
            let mut st = current.clone();
            if tries_left == 0 {
                set_bad(
                    &mut st,
                    id,
                    &format!("{reason} (on its last try, {} of {})", d.tries, d.tries),
                    now,
                );
            } else if let Some(m) = st.get_mut(id) {
                m.note = clean_note(&format!(
                    "try {} of {}: {reason}",
                    d.tries - tries_left,
                    d.tries
                ));
            }
            st.generation += 1;
            (Some(st), AfterFailure::Reboot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::state::tests::image;

    #[test]
    fn a_blessed_boot_and_the_new_deployment_are_the_a_and_b() {
        let mut s = DeploymentState::empty();
        for (id, status) in [(1, Status::Good), (2, Status::Good)] {
            s.deployments.push(crate::deploy::state::tests::deployment(
                id, id as u8, status,
            ));
        }
        s.next_id = 3;
        s.default = Some(1);
        let (s, out) = deploy(Some(&s), &Booted::Deployment(1), &req(3)).unwrap();
        let ids: Vec<u32> = s.deployments.iter().map(|d| d.id).collect();
        assert_eq!(
            ids,
            [1, 3],
            "the newer good deployment 2 is pruned: {out:?}"
        );
        // On trial, the booted one keeps the last good one beside it, and a third is
        // refused with keep 2.
        let err = deploy(Some(&s), &Booted::Deployment(3), &req(4)).unwrap_err();
        assert!(err.to_string().contains("not blessed yet"), "{err}");
        let mut wide = s.clone();
        wide.keep = 3;
        let (s, _) = deploy(Some(&wide), &Booted::Deployment(3), &req(4)).unwrap();
        let ids: Vec<u32> = s.deployments.iter().map(|d| d.id).collect();
        assert_eq!(
            ids,
            [1, 3, 4],
            "the booted trial, the last good, the new one"
        );
    }

    fn req(n: u8) -> DeployRequest {
        DeployRequest {
            image: image(n),
            tag: Some(format!("v{n}")),
            tries: 3,
            keep: None,
            now: 100,
        }
    }

    fn ids(s: &DeploymentState) -> Vec<u32> {
        s.deployments.iter().map(|d| d.id).collect()
    }

    #[test]
    fn the_first_deploy_on_a_build_machine_is_just_staged() {
        let (s, out) = deploy(None, &Booted::Unknown, &req(1)).unwrap();
        assert_eq!(
            out,
            DeployOutcome::Staged {
                id: 1,
                adopted: None,
                pruned: vec![]
            }
        );
        assert_eq!(s.default, Some(1));
        let d = s.get(1).unwrap();
        assert_eq!(d.status, Status::Pending { tries_left: 3 });
        assert_eq!(d.etc_from, EtcFrom::Nothing);
        s.validate().unwrap();
    }

    #[test]
    fn a_pinned_boot_is_adopted_as_the_rollback() {
        let (s, out) = deploy(None, &Booted::Pinned(image(1)), &req(2)).unwrap();
        assert_eq!(
            out,
            DeployOutcome::Staged {
                id: 2,
                adopted: Some(1),
                pruned: vec![]
            }
        );
        assert_eq!(s.get(1).unwrap().status, Status::Good);
        assert_eq!(s.get(1).unwrap().etc_from, EtcFrom::Image(image(1)));
        assert_eq!(
            s.get(2).unwrap().etc_from,
            EtcFrom::Image(image(1)),
            "the running /etc"
        );
        assert_eq!(s.rollback_target().map(|d| d.id), Some(1));
        s.validate().unwrap();
    }

    #[test]
    fn a_b_keeps_the_booted_and_the_new_one() {
        let (s, _) = deploy(None, &Booted::Unknown, &req(1)).unwrap();
        let s = bless(&s, 1, 1).unwrap().unwrap();
        let (s, _) = deploy(Some(&s), &Booted::Deployment(1), &req(2)).unwrap();
        assert_eq!(s.get(2).unwrap().etc_from, EtcFrom::Deployment(1));
        // Staged again before rebooting: the staged one goes, the booted one stays.
        let (s, out) = deploy(Some(&s), &Booted::Deployment(1), &req(3)).unwrap();
        assert_eq!(ids(&s), [1, 3]);
        let DeployOutcome::Staged { pruned, .. } = out else {
            panic!()
        };
        assert_eq!(pruned.iter().map(|d| d.id).collect::<Vec<_>>(), [2]);
        // Three kept: the good ones stay before the others.
        let (mut s, _) = deploy(
            Some(&s),
            &Booted::Deployment(1),
            &DeployRequest {
                keep: Some(3),
                ..req(4)
            },
        )
        .unwrap();
        assert_eq!(ids(&s), [1, 3, 4]);
        // A bad one goes before a pending one.
        s.get_mut(3).unwrap().status = Status::Bad;
        let (s, _) = deploy(Some(&s), &Booted::Deployment(1), &req(5)).unwrap();
        assert_eq!(s.keep, 3, "the limit stays");
        assert_eq!(ids(&s), [1, 4, 5]);
        s.validate().unwrap();
    }

    #[test]
    fn the_last_good_deployment_is_never_pruned() {
        let (s, _) = deploy(None, &Booted::Unknown, &req(1)).unwrap();
        let s = bless(&s, 1, 1).unwrap().unwrap();
        let (s, _) = deploy(Some(&s), &Booted::Deployment(1), &req(2)).unwrap();
        // Booted into 2, on trial, and asked to deploy 3: 1, 2 and 3 would all be needed.
        let err = deploy(Some(&s), &Booted::Deployment(2), &req(3)).unwrap_err();
        assert!(err.to_string().contains("--keep 3"), "{err}");
        let (s, _) = deploy(
            Some(&s),
            &Booted::Deployment(2),
            &DeployRequest {
                keep: Some(3),
                ..req(3)
            },
        )
        .unwrap();
        assert_eq!(ids(&s), [1, 2, 3]);
    }

    #[test]
    fn deploying_the_booted_image_unstages() {
        let (s, _) = deploy(None, &Booted::Pinned(image(1)), &req(2)).unwrap();
        let (s, out) = deploy(Some(&s), &Booted::Pinned(image(1)), &req(1)).unwrap();
        assert_eq!(out, DeployOutcome::AlreadyBooted { id: 1 });
        assert_eq!(s.default, Some(1));
        assert_eq!(ids(&s), [1, 2]);
    }

    #[test]
    fn bad_arguments_and_unknown_deployments() {
        assert!(matches!(
            deploy(
                None,
                &Booted::Unknown,
                &DeployRequest { tries: 0, ..req(1) }
            ),
            Err(OpError::BadArgument(_))
        ));
        assert!(matches!(
            deploy(
                None,
                &Booted::Unknown,
                &DeployRequest {
                    keep: Some(1),
                    ..req(1)
                }
            ),
            Err(OpError::BadArgument(_))
        ));
        assert!(deploy(None, &Booted::Deployment(7), &req(1)).is_err());
        let s = DeploymentState::empty();
        assert!(bless(&s, 1, 0).is_err());
        assert!(mark_bad(&s, 1, "x", 0).is_err());
        assert!(rollback(&s).is_err());
    }

    #[test]
    fn rollback_toggles_between_good_deployments() {
        let (s, _) = deploy(None, &Booted::Pinned(image(1)), &req(3)).unwrap();
        // Staged 3 not booted yet: rollback un-stages it.
        let (r, to) = rollback(&s).unwrap();
        assert_eq!((to, r.default), (1, Some(1)));
        let s = bless(&s, 2, 5).unwrap().unwrap();
        let (s, to) = rollback(&s).unwrap();
        assert_eq!(to, 1);
        let (_, to) = rollback(&s).unwrap();
        assert_eq!(to, 2, "and forward again");
    }

    #[test]
    fn bless_and_mark_bad() {
        let (s, _) = deploy(None, &Booted::Pinned(image(1)), &req(2)).unwrap();
        let g = bless(&s, 2, 9).unwrap().unwrap();
        assert_eq!(g.get(2).unwrap().status, Status::Good);
        assert_eq!(g.get(2).unwrap().changed_at, 9);
        assert!(
            bless(&g, 2, 10).unwrap().is_none(),
            "blessing twice changes nothing"
        );
        let b = mark_bad(&g, 2, "broke the network\n", 11).unwrap();
        assert_eq!(b.get(2).unwrap().status, Status::Bad);
        assert_eq!(b.get(2).unwrap().note, "broke the network");
        assert_eq!(b.default, Some(1), "the next boot is the good one");
        assert!(
            bless(&b, 2, 12)
                .unwrap_err()
                .to_string()
                .contains("broke the network")
        );
    }

    #[test]
    fn a_failed_check_reboots_a_trial_and_spares_a_good_deployment() {
        let (mut s, _) = deploy(None, &Booted::Pinned(image(1)), &req(2)).unwrap();
        s.get_mut(2).unwrap().status = Status::Pending { tries_left: 1 };
        let (n, act) = health_check_failed(&s, 2, "required health check 50-app failed", 7);
        assert_eq!(act, AfterFailure::Reboot);
        let n = n.unwrap();
        assert_eq!(n.get(2).unwrap().status, Status::Pending { tries_left: 1 });
        assert_eq!(
            n.get(2).unwrap().note,
            "try 2 of 3: required health check 50-app failed"
        );
        s.get_mut(2).unwrap().status = Status::Pending { tries_left: 0 };
        let (n, act) = health_check_failed(&s, 2, "required health check 50-app failed", 7);
        assert_eq!(act, AfterFailure::Reboot);
        let n = n.unwrap();
        assert_eq!(n.get(2).unwrap().status, Status::Bad);
        assert!(
            n.get(2).unwrap().note.contains("last try"),
            "{}",
            n.get(2).unwrap().note
        );
        assert_eq!(n.default, Some(1));
        assert_eq!(
            health_check_failed(&n, 1, "x", 8),
            (None, AfterFailure::Stay)
        );
        assert_eq!(
            health_check_failed(&n, 9, "x", 8),
            (None, AfterFailure::Stay)
        );
    }
}
