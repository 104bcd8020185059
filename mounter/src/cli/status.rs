//! `imgmount status`: the deployments, which one booted, which boots next.

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::deployment_args::DeploymentArgs;
use crate::deploy::commit::{StateRead, read_state};
use crate::deploy::ops::Booted;
use crate::deploy::state::{Deployment, DeploymentState, Status};
use crate::deploy::store::{format_time, read_signatures};

/// Show the deployments: which one is booted, which boots next, which is the rollback.
///
/// Each deployment has an id, its image's digest and the tag it was deployed by, when
/// it was deployed, and its state: pending (on trial, with the tries left before it
/// counts as bad), good (blessed: a boot of it completed with its health checks
/// passing) or bad (with the reason). `next boot` is what setup-root tries first;
/// `rollback` is what `imgmount rollback` would make the next boot.
///
/// Example:
///   imgmount status
///   imgmount status --json | jq .booted
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: DeploymentArgs,
    /// Print a JSON object: booted, next_boot and rollback (deployment ids or null),
    /// problem, and deployments (id, image, tag, state, tries, tries_left, boots,
    /// deployed_at, changed_at, note, signed).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonDeployment {
    id: u32,
    image: String,
    tag: Option<String>,
    state: &'static str,
    tries: u8,
    tries_left: Option<u8>,
    boots: u32,
    deployed_at: u64,
    changed_at: u64,
    note: String,
    /// Key ids of the signatures stored for the image.
    signed: Vec<String>,
    booted: bool,
    next_boot: bool,
    rollback: bool,
}

#[derive(Serialize)]
struct JsonStatus {
    store: String,
    generation: u64,
    keep: u8,
    booted: Option<u32>,
    booted_image: Option<String>,
    next_boot: Option<u32>,
    rollback: Option<u32>,
    problem: Option<String>,
    deployments: Vec<JsonDeployment>,
}

fn state_text(d: &Deployment) -> String {
    match d.status {
        Status::Pending { tries_left } => format!(
            "pending, {tries_left} of {} {} left",
            d.tries,
            if d.tries == 1 { "try" } else { "tries" }
        ),
        Status::Good => "good".into(),
        Status::Bad => format!("bad: {}", d.note),
    }
}

pub fn run(args: StatusArgs) -> Result<()> {
    let store = args.common.store_root()?;
    let booted = args.common.booted()?;
    let read = read_state(&store);
    let empty = DeploymentState::empty();
    let st = read.state().unwrap_or(&empty);
    let booted_id = booted.deployment_in(st);
    let rollback = st.rollback_target().map(|d| d.id);
    let signed = |d: &Deployment| -> Vec<String> {
        match read_signatures(&store, &d.image) {
            Ok(Some(s)) => s
                .signed
                .iter()
                .map(|k| crate::deploy::keys::key_id(&k.key))
                .collect(),
            _ => Vec::new(),
        }
    };
    if args.json {
        let out = JsonStatus {
            store: store.path().display().to_string(),
            generation: st.generation,
            keep: st.keep,
            booted: booted_id,
            booted_image: match booted {
                Booted::Deployment(id) => st.get(id).map(|d| d.image.to_string()),
                Booted::Pinned(d) => Some(d.to_string()),
                Booted::Unknown => None,
            },
            next_boot: st.default,
            rollback,
            problem: read.problem().map(str::to_owned),
            deployments: st
                .deployments
                .iter()
                .map(|d| JsonDeployment {
                    id: d.id,
                    image: d.image.to_string(),
                    tag: d.tag.clone(),
                    state: d.status.name(),
                    tries: d.tries,
                    tries_left: match d.status {
                        Status::Pending { tries_left } => Some(tries_left),
                        _ => None,
                    },
                    boots: d.boots,
                    deployed_at: d.deployed_at,
                    changed_at: d.changed_at,
                    note: d.note.clone(),
                    signed: signed(d),
                    booted: booted_id == Some(d.id),
                    next_boot: st.default == Some(d.id),
                    rollback: rollback == Some(d.id),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(p) = read.problem() {
        println!("warning: {p}");
    }
    match &booted {
        Booted::Deployment(id) => println!("booted: deployment {id}"),
        Booted::Pinned(d) => println!("booted: the image the command line pins, {d}"),
        Booted::Unknown => println!("booted: not from this store's deployments"),
    }
    if matches!(read, StateRead::Missing) || st.deployments.is_empty() {
        println!(
            "no deployments in {} (see imgmount deploy)",
            store.path().display()
        );
        return Ok(());
    }
    for d in st.deployments.iter().rev() {
        let mut roles = Vec::new();
        if booted_id == Some(d.id) {
            roles.push("booted");
        }
        if st.default == Some(d.id) {
            roles.push("next boot");
        }
        if rollback == Some(d.id) {
            roles.push("rollback");
        }
        let mark = if st.default == Some(d.id) { '*' } else { ' ' };
        println!(
            "{mark} deployment {}{}",
            d.id,
            if roles.is_empty() {
                String::new()
            } else {
                format!(" ({})", roles.join(", "))
            }
        );
        println!("    image:    {}", d.image);
        if let Some(t) = &d.tag {
            println!("    tag:      {t}");
        }
        println!("    deployed: {}", format_time(d.deployed_at));
        println!("    state:    {}", state_text(d));
        if !matches!(d.status, Status::Bad) && !d.note.is_empty() {
            println!("    note:     {}", d.note);
        }
        println!("    boots:    {}", d.boots);
        let keys = signed(d);
        if !keys.is_empty() {
            println!("    signed:   {}", keys.join(", "));
        }
    }
    Ok(())
}
