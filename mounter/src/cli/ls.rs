//! `imgmount ls`: list a directory of an image without mounting it.

use std::io::{self, BufWriter, Write};

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::tree::{Directory, LeafContent, Node, RegularFile, Tree};
use serde::Serialize;

use super::registry_args::RegistryArgs;
use super::store_path::{IMAGE_HELP, StoreArg, find_image};

/// List the entries of a directory inside an image, as a mount would show them.
///
/// Each line shows mode, link count, owner, group, size, modification time
/// (seconds.nanoseconds since the epoch) and name; symlinks show their target.
/// With --json the output is one JSON array of objects, for scripts.
///
/// Example:
///   imgmount ls rootfs.cfs /etc --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct LsArgs {
    #[arg(value_name = "IMAGE", help = IMAGE_HELP)]
    pub image: String,
    /// Directory (or file) inside the image to list.
    #[arg(default_value = "/")]
    pub path: String,
    /// Print a JSON array instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// One listed entry, as `--json` prints it.
#[derive(Serialize, Debug)]
struct Entry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_sec: u64,
    mtime_nsec: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rdev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

pub fn run(args: LsArgs) -> Result<()> {
    // A stored image as checked against its name; a file read whole, not mapped.
    let (path, image) = find_image(&args.store, &args.image, &args.registry)?.open()?;
    let shown = path.display();
    let tree = tree_from_image(&image).with_context(|| format!("reading {shown}"))?;
    let links = tree.stored_link_counts();
    let path = args.path.as_bytes();
    let mut entries = Vec::new();
    match tree
        .node(path)
        .with_context(|| format!("looking in {shown}"))?
    {
        None => list_directory(&tree, &tree.root, &links, &mut entries),
        Some(Node::Directory(dir)) => list_directory(&tree, dir, &links, &mut entries),
        Some(node) => {
            let name = args.path.rsplit('/').next().unwrap_or(&args.path);
            entries.push(entry(&tree, name.as_bytes(), node, &links));
        }
    }
    let mut out = BufWriter::new(io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
    } else {
        for e in &entries {
            let size = e.rdev.map_or(e.size.to_string(), |d| {
                format!("{}, {}", libc::major(d), libc::minor(d))
            });
            write!(
                out,
                "{} {:>3} {:>5} {:>5} {:>10} {}.{:09} {}",
                mode_string(e.kind, e.mode),
                e.nlink,
                e.uid,
                e.gid,
                size,
                e.mtime_sec,
                e.mtime_nsec,
                e.name
            )?;
            if let Some(t) = &e.target {
                write!(out, " -> {t}")?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn list_directory(tree: &Tree, dir: &Directory, links: &[u32], out: &mut Vec<Entry>) {
    for (name, node) in &dir.entries {
        out.push(entry(tree, name, node, links));
    }
}

fn entry(tree: &Tree, name: &[u8], node: &Node, links: &[u32]) -> Entry {
    let name = String::from_utf8_lossy(name).into_owned();
    match node {
        Node::Directory(d) => Entry {
            name,
            kind: "directory",
            mode: d.stat.mode,
            nlink: u32::try_from(d.shown_link_count()).unwrap_or(u32::MAX),
            uid: d.stat.uid,
            gid: d.stat.gid,
            size: 0,
            mtime_sec: d.stat.mtime.sec,
            mtime_nsec: d.stat.mtime.nsec,
            target: None,
            rdev: None,
            digest: None,
        },
        Node::Leaf(id) => {
            let leaf = tree.leaf(*id);
            let (kind, size, target, rdev, digest) = match &leaf.content {
                LeafContent::Regular(f) => {
                    let digest = match f {
                        RegularFile::External { digest, .. } => digest.map(|d| d.to_string()),
                        RegularFile::Inline(_) => None,
                    };
                    ("file", f.size(), None, None, digest)
                }
                LeafContent::Symlink(t) => (
                    "symlink",
                    t.len() as u64,
                    Some(String::from_utf8_lossy(t).into_owned()),
                    None,
                    None,
                ),
                LeafContent::CharDevice(d) => ("char-device", 0, None, Some(*d), None),
                LeafContent::BlockDevice(d) => ("block-device", 0, None, Some(*d), None),
                LeafContent::Fifo => ("fifo", 0, None, None, None),
                LeafContent::Socket => ("socket", 0, None, None, None),
            };
            Entry {
                name,
                kind,
                mode: leaf.stat.mode,
                nlink: links.get(id.0).copied().unwrap_or(1),
                uid: leaf.stat.uid,
                gid: leaf.stat.gid,
                size,
                mtime_sec: leaf.stat.mtime.sec,
                mtime_nsec: leaf.stat.mtime.nsec,
                target,
                rdev,
                digest,
            }
        }
    }
}

/// `ls -l` style mode string, e.g. `-rwsr-xr-x`.
fn mode_string(kind: &str, mode: u32) -> String {
    let t = match kind {
        "directory" => 'd',
        "symlink" => 'l',
        "char-device" => 'c',
        "block-device" => 'b',
        "fifo" => 'p',
        "socket" => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bit = |m: u32, c: char| if mode & m != 0 { c } else { '-' };
    let exec =
        |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(exec(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(exec(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(exec(0o001, 0o1000, 't', 'T'));
    s
}

#[cfg(test)]
mod tests {
    use super::mode_string;

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string("file", 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string("directory", 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string("file", 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string("symlink", 0o777), "lrwxrwxrwx");
    }
}
