//! `mount.imgmount`: the helper mount(8) runs for `mount -t imgmount IMAGE DIR -o …` and
//! for fstab lines and systemd mount units of type `imgmount`. The same binary, installed
//! (or linked) as `/sbin/mount.imgmount`, turns the helper's command line into
//! `imgmount mount`'s.
//!
//! mount(8) calls `mount.imgmount SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`. In
//! OPTIONS, imgmount's own settings are `key=value` (`objects=DIR`, `digest=sha256:HEX`,
//! `store=DIR`, …, the long options of `imgmount mount` without their dashes); the options
//! that only mean something to mount(8) or to systemd (`rw`, which mount(8) adds by
//! default, `defaults`, `nofail`, `_netdev`, `x-*`, …) are dropped; the rest are mount
//! options as for `imgmount mount -o`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// `imgmount mount` options that take a value, as they are spelt in `-o key=value`.
const VALUE_OPTIONS: &[&str] = &[
    "objects",
    "verity-dir",
    "digest",
    "verity",
    "cache-size",
    "threads",
    "read-ahead-files",
    "store",
    "log-file",
];

/// Options for mount(8), fstab or systemd, not for the filesystem.
fn is_userspace_only(opt: &str) -> bool {
    matches!(
        opt,
        "rw" | "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

/// Whether this process was started as the mount helper.
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new("mount.imgmount"))
}

/// What the helper was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum HelperCall {
    /// Run `imgmount` with these arguments (the program name first).
    Mount(Vec<OsString>),
    /// `-f`: check the arguments but mount nothing.
    Fake(Vec<OsString>),
}

/// Turns a helper command line (without the program name) into `imgmount mount`'s.
pub fn translate(args: &[OsString]) -> Result<HelperCall, String> {
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = arg.to_str();
        match text {
            Some("-o") => {
                let value = it.next().ok_or("-o needs a list of options")?;
                let value = value
                    .to_str()
                    .ok_or("the options after -o are not valid UTF-8")?;
                options.extend(
                    value
                        .split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned),
                );
            }
            Some("-t") => {
                it.next().ok_or("-t needs a type")?;
            }
            Some("-N") => return Err("-N (another mount namespace) is not supported".into()),
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags.chars().skip(1) {
                    match flag {
                        'f' => fake = true,
                        // No mtab to write, sloppy and verbose: nothing to do differently.
                        'n' | 's' | 'v' => {}
                        other => return Err(format!("unknown flag -{other}")),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [spec, dir] = <[OsString; 2]>::try_from(positional)
        .map_err(|p| format!("expected IMAGE and DIR, got {} arguments", p.len()))?;
    let mut out: Vec<OsString> = vec!["imgmount".into(), "mount".into()];
    let mut rest = Vec::new();
    for opt in options {
        if is_userspace_only(&opt) {
            continue;
        }
        match opt.split_once('=') {
            Some((key, value)) if VALUE_OPTIONS.contains(&key.replace('_', "-").as_str()) => {
                out.push(format!("--{}={value}", key.replace('_', "-")).into());
            }
            _ => rest.push(opt),
        }
    }
    if !rest.is_empty() {
        out.push("-o".into());
        out.push(rest.join(",").into());
    }
    out.push(spec);
    out.push(dir);
    Ok(if fake {
        HelperCall::Fake(out)
    } else {
        HelperCall::Mount(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &[&str]) -> Result<HelperCall, String> {
        translate(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments_become_mount_arguments() {
        // What util-linux 2.38 passes for an fstab line
        // `web:stable /srv/web imgmount noauto,store=/s,x-systemd.automount,_netdev 0 0`.
        assert_eq!(
            call(&[
                "web:stable",
                "/srv/web",
                "-o",
                "rw,store=/s,read_ahead_files=0,_netdev"
            ]),
            Ok(HelperCall::Mount(argv(&[
                "imgmount",
                "mount",
                "--store=/s",
                "--read-ahead-files=0",
                "web:stable",
                "/srv/web"
            ])))
        );
        assert_eq!(
            call(&[
                "/i.cfs",
                "/mnt",
                "-n",
                "-o",
                "ro,objects=/o,digest=sha256:ab,verity_dir=/v,allow_other,nofail,noexec",
                "-t",
                "imgmount"
            ]),
            Ok(HelperCall::Mount(argv(&[
                "imgmount",
                "mount",
                "--objects=/o",
                "--digest=sha256:ab",
                "--verity-dir=/v",
                "-o",
                "ro,allow_other,noexec",
                "/i.cfs",
                "/mnt"
            ])))
        );
        assert!(matches!(
            call(&["-fv", "/i.cfs", "/mnt"]),
            Ok(HelperCall::Fake(_))
        ));
        assert!(
            call(&["/i.cfs"])
                .unwrap_err()
                .contains("expected IMAGE and DIR")
        );
        assert!(call(&["/i.cfs", "/mnt", "-N", "1"]).is_err());
        assert!(call(&["/i.cfs", "/mnt", "-o"]).is_err());
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.imgmount")));
        assert!(!invoked_as_helper(OsStr::new("/usr/bin/imgmount")));
    }
}
