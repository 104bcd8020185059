//! The deployment state: which images are deployed, which boots next, how each one fared.
//!
//! It lives in the store (`deployments/state`, see [`super::commit`]) and is untrusted input
//! like everything there: [`DeploymentState::decode`] checks a magic, a version, a SHA-256
//! of the whole file and every invariant ([`DeploymentState::validate`]), and refuses with a
//! reason instead of panicking. The same invariants are checked before anything is written.
//!
//! File layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `IMGDEPLS` |
//! | 8 | 2 | version (1) |
//! | 10 | 2 | flags (0) |
//! | 12 | 4 | body length |
//! | 16 | n | body |
//! | 16+n | 32 | SHA-256 of bytes 0..16+n |
//!
//! Body: `generation` u64, `next_id` u32, `keep` u8, `count` u8, 2 zero bytes, `default`
//! u32 (0: none), then `count` deployments of [`DEPLOYMENT_FIXED`] bytes plus their tag and
//! note: `id` u32, image algorithm u8 (1 sha256, 2 sha512), status u8 (0 pending, 1 good,
//! 2 bad), `tries` u8, `tries_left` u8, image digest 64 bytes (zero padded), `deployed_at`
//! u64, `changed_at` u64 (seconds since the epoch), `boots` u32, `/etc` source kind u8
//! (0 nothing, 1 an image's, 2 a deployment's), its image algorithm u8, tag length u8, a
//! zero byte, its deployment id u32, its image digest 64 bytes, note length u16, the tag,
//! the note (UTF-8).

use imgmount_format::store::validate_tag;
use imgmount_format::verity::{Digest, HashAlg};
use sha2::{Digest as _, Sha256};

use super::wire::{Truncated, WireReader, WireWriter};

pub const MAGIC: [u8; 8] = *b"IMGDEPLS";
pub const VERSION: u16 = 1;
/// More deployments than anyone keeps; bounds the file.
pub const MAX_DEPLOYMENTS: usize = 32;
/// Largest state file accepted (32 deployments with the longest tags and notes fit).
pub const MAX_STATE_BYTES: u64 = 64 << 10;
pub const MAX_TRIES: u8 = 100;
/// greenboot's default number of boot attempts.
pub const DEFAULT_TRIES: u8 = 3;
/// A/B: the deployment booted and the one staged.
pub const DEFAULT_KEEP: u8 = 2;
pub const MAX_NOTE: usize = 1024;
const HEADER: usize = 16;
const BODY_FIXED: usize = 20;
/// Bytes of one deployment record before its tag and note.
pub const DEPLOYMENT_FIXED: usize = 166;
const DIGEST_FIELD: usize = 64;

/// How a deployment fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not yet blessed: booted at most `tries_left` more times before it counts as bad.
    Pending { tries_left: u8 },
    /// Blessed: a boot of it completed with every required health check passing.
    Good,
    /// Never booted again (the note says why).
    Bad,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending { .. } => "pending",
            Status::Good => "good",
            Status::Bad => "bad",
        }
    }
}

/// Where a deployment's `/etc` changes start from on its first boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcFrom {
    /// The image's `/etc` as it is.
    Nothing,
    /// The changes of a boot pinned by the command line to this image (`etc/<hex>`).
    Image(Digest),
    /// Another deployment's changes (`etc/deploy-<id>`).
    Deployment(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Unique, increasing; shown as "deployment N".
    pub id: u32,
    pub image: Digest,
    /// The tag it was deployed by, for people.
    pub tag: Option<String>,
    pub deployed_at: u64,
    /// The tries it was deployed with.
    pub tries: u8,
    pub status: Status,
    /// How many times `setup-root` booted it.
    pub boots: u32,
    /// When the status last changed (blessed, marked bad), or when deployed.
    pub changed_at: u64,
    pub etc_from: EtcFrom,
    /// Why it is bad, or how its last try failed.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentState {
    /// Counts the changes, so two states can be told apart.
    pub generation: u64,
    pub next_id: u32,
    /// At most this many deployments are kept.
    pub keep: u8,
    /// The deployment the next boot tries first.
    pub default: Option<u32>,
    /// Sorted by id.
    pub deployments: Vec<Deployment>,
}

/// Why a state file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("is not a deployment state file (bad magic)")]
    Magic,
    #[error("has version {0}, which this imgmount does not know (it knows {VERSION})")]
    Version(u16),
    #[error("is {0} bytes, more than a state file can be ({MAX_STATE_BYTES})")]
    TooLarge(u64),
    #[error("is truncated: it {0}")]
    Truncated(#[from] Truncated),
    #[error("fails its checksum: it was damaged or changed by hand")]
    Checksum,
    #[error("is inconsistent: {0}")]
    Invalid(String),
}

impl Deployment {
    /// Where its `/etc` changes live, under the state folder's `etc/`.
    pub fn etc_dir_name(&self) -> String {
        etc_dir_of_deployment(self.id)
    }

    pub fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("deployment {} ({t}, {})", self.id, self.image),
            None => format!("deployment {} ({})", self.id, self.image),
        }
    }
}

/// The `etc/` entry of a deployment's `/etc` changes.
pub fn etc_dir_of_deployment(id: u32) -> String {
    format!("deploy-{id}")
}

impl EtcFrom {
    /// The `etc/` entry the changes are copied from, if any.
    pub fn dir_name(&self) -> Option<String> {
        match self {
            EtcFrom::Nothing => None,
            EtcFrom::Image(d) => Some(d.to_hex()),
            EtcFrom::Deployment(id) => Some(etc_dir_of_deployment(*id)),
        }
    }
}

/// Replaces control characters (a check's output may hold anything) and bounds the length.
pub fn clean_note(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn invalid(msg: String) -> StateError {
    StateError::Invalid(msg)
}

impl DeploymentState {
    /// The state of a store that has had no deployment yet.
    pub fn empty() -> Self {
        DeploymentState {
            generation: 0,
            next_id: 1,
            keep: DEFAULT_KEEP,
            default: None,
            deployments: Vec::new(),
        }
    }

    pub fn get(&self, id: u32) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.id == id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Deployment> {
        self.deployments.iter_mut().find(|d| d.id == id)
    }

    /// The newest good deployment that is not one of `except`.
    pub fn newest_good_except(&self, except: &[u32]) -> Option<&Deployment> {
        self.deployments
            .iter()
            .rev()
            .find(|d| d.status == Status::Good && !except.contains(&d.id))
    }

    /// What `imgmount rollback` would make the next boot: the newest good deployment that
    /// is not the default.
    pub fn rollback_target(&self) -> Option<&Deployment> {
        let except: Vec<u32> = self.default.into_iter().collect();
        self.newest_good_except(&except)
    }

    /// Every invariant a state must keep; checked on reading and before writing.
    pub fn validate(&self) -> Result<(), StateError> {
        if !(2..=MAX_DEPLOYMENTS).contains(&usize::from(self.keep)) {
            return Err(invalid(format!(
                "keeps {} deployments (2 to {MAX_DEPLOYMENTS})",
                self.keep
            )));
        }
        if self.deployments.len() > MAX_DEPLOYMENTS {
            return Err(invalid(format!(
                "{} deployments, more than {MAX_DEPLOYMENTS}",
                self.deployments.len()
            )));
        }
        let mut last = 0;
        for d in &self.deployments {
            if d.id <= last || d.id >= self.next_id {
                return Err(invalid(format!(
                    "deployment ids out of order or unassigned: {} after {last}, next {}",
                    d.id, self.next_id
                )));
            }
            last = d.id;
            if d.tries == 0 || d.tries > MAX_TRIES {
                return Err(invalid(format!(
                    "deployment {} has {} tries (1 to {MAX_TRIES})",
                    d.id, d.tries
                )));
            }
            if let Status::Pending { tries_left } = d.status
                && tries_left > d.tries
            {
                return Err(invalid(format!(
                    "deployment {} has {tries_left} tries left of {}",
                    d.id, d.tries
                )));
            }
            if let Some(t) = &d.tag {
                validate_tag(t).map_err(|e| invalid(format!("deployment {}: {e}", d.id)))?;
            }
            if d.note.len() > MAX_NOTE || d.note.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "deployment {}'s note is too long or holds control characters",
                    d.id
                )));
            }
            if let EtcFrom::Deployment(from) = d.etc_from
                && from >= d.id
            {
                return Err(invalid(format!(
                    "deployment {} takes /etc from a later deployment {from}",
                    d.id
                )));
            }
        }
        if let Some(def) = self.default
            && self.get(def).is_none()
        {
            return Err(invalid(format!(
                "the next boot is deployment {def}, which does not exist"
            )));
        }
        Ok(())
    }

    /// The file's bytes. Fails only on a state that breaks an invariant.
    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        self.validate()?;
        let mut body = WireWriter::default();
        body.u64(self.generation)
            .u32(self.next_id)
            .u8(self.keep)
            .u8(self.deployments.len() as u8)
            .u16(0)
            .u32(self.default.unwrap_or(0));
        for d in &self.deployments {
            let (status, tries_left) = match d.status {
                Status::Pending { tries_left } => (0, tries_left),
                Status::Good => (1, 0),
                Status::Bad => (2, 0),
            };
            let (etc_kind, etc_alg, etc_id, etc_image) = match d.etc_from {
                EtcFrom::Nothing => (0, 0, 0, None),
                EtcFrom::Image(i) => (1, i.alg().id(), 0, Some(i)),
                EtcFrom::Deployment(id) => (2, 0, id, None),
            };
            let tag = d.tag.as_deref().unwrap_or("");
            body.u32(d.id)
                .u8(d.image.alg().id())
                .u8(status)
                .u8(d.tries)
                .u8(tries_left)
                .bytes(&padded(Some(&d.image)))
                .u64(d.deployed_at)
                .u64(d.changed_at)
                .u32(d.boots)
                .u8(etc_kind)
                .u8(etc_alg)
                .u8(tag.len() as u8)
                .u8(0)
                .u32(etc_id)
                .bytes(&padded(etc_image.as_ref()))
                .u16(d.note.len() as u16)
                .bytes(tag.as_bytes())
                .bytes(d.note.as_bytes());
        }
        let mut out = WireWriter::default();
        out.bytes(&MAGIC)
            .u16(VERSION)
            .u16(0)
            .u32(body.buf.len() as u32)
            .bytes(&body.buf);
        let sum = Sha256::digest(&out.buf);
        out.bytes(&sum);
        Ok(out.buf)
    }

    /// Parses and checks a state file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StateError::TooLarge(bytes.len() as u64));
        }
        let mut r = WireReader::new(bytes);
        if r.array::<8>("the magic")? != MAGIC {
            return Err(StateError::Magic);
        }
        let version = r.u16("the version")?;
        if version != VERSION {
            return Err(StateError::Version(version));
        }
        let flags = r.u16("the flags")?;
        let body_len = r.u32("the body length")? as usize;
        let body = r.bytes(body_len, "the body")?;
        let sum = r.array::<32>("the checksum")?;
        if r.remaining() != 0 {
            return Err(invalid(format!(
                "{} bytes after the checksum",
                r.remaining()
            )));
        }
        if Sha256::digest(&bytes[..HEADER + body_len]).as_slice() != sum {
            return Err(StateError::Checksum);
        }
        if flags != 0 {
            return Err(invalid(format!("unknown flags {flags:#x}")));
        }
        let state = decode_body(body)?;
        state.validate()?;
        Ok(state)
    }
}

fn padded(d: Option<&Digest>) -> [u8; DIGEST_FIELD] {
    let mut out = [0u8; DIGEST_FIELD];
    if let Some(d) = d {
        out[..d.as_bytes().len()].copy_from_slice(d.as_bytes());
    }
    out
}

/// A digest from its algorithm number and zero-padded field.
fn digest_field(alg: u8, field: &[u8; DIGEST_FIELD], what: &str) -> Result<Digest, StateError> {
    let alg = HashAlg::from_id(alg)
        .ok_or_else(|| invalid(format!("{what} has unknown digest algorithm {alg}")))?;
    let (bytes, pad) = field.split_at(alg.digest_len());
    if pad.iter().any(|b| *b != 0) {
        return Err(invalid(format!(
            "{what}'s digest has bytes past its length"
        )));
    }
    Digest::new(alg, bytes).ok_or_else(|| invalid(format!("{what}'s digest is malformed")))
}

fn decode_body(body: &[u8]) -> Result<DeploymentState, StateError> {
    let mut r = WireReader::new(body);
    let generation = r.u64("the generation")?;
    let next_id = r.u32("the next id")?;
    let keep = r.u8("the number kept")?;
    let count = r.u8("the count")?;
    if r.u16("reserved bytes")? != 0 {
        return Err(invalid("reserved bytes are not zero".into()));
    }
    let default = match r.u32("the next boot")? {
        0 => None,
        id => Some(id),
    };
    debug_assert_eq!(r.position(), BODY_FIXED);
    if usize::from(count) > MAX_DEPLOYMENTS {
        return Err(invalid(format!(
            "{count} deployments, more than {MAX_DEPLOYMENTS}"
        )));
    }
    let mut deployments = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let start = r.position();
        let id = r.u32("a deployment id")?;
        let what = format!("deployment {id}");
        let alg = r.u8("an image algorithm")?;
        let status = r.u8("a status")?;
        let tries = r.u8("tries")?;
        let tries_left = r.u8("tries left")?;
        let image = digest_field(alg, &r.array("an image digest")?, &what)?;
        let deployed_at = r.u64("a deployment time")?;
        let changed_at = r.u64("a change time")?;
        let boots = r.u32("a boot count")?;
        let etc_kind = r.u8("an /etc source")?;
        let etc_alg = r.u8("an /etc source algorithm")?;
        let tag_len = r.u8("a tag length")?;
        if r.u8("a reserved byte")? != 0 {
            return Err(invalid(format!("{what}: a reserved byte is not zero")));
        }
        let etc_id = r.u32("an /etc source deployment")?;
        let etc_image: [u8; DIGEST_FIELD] = r.array("an /etc source image")?;
        let note_len = r.u16("a note length")?;
        debug_assert_eq!(r.position() - start, DEPLOYMENT_FIXED);
        let tag = r.bytes(usize::from(tag_len), "a tag")?;
        let note = r.bytes(usize::from(note_len), "a note")?;
        let status = match (status, tries_left) {
            (0, left) => Status::Pending { tries_left: left },
            (1, 0) => Status::Good,
            (2, 0) => Status::Bad,
            _ => {
                return Err(invalid(format!(
                    "{what} has status {status} with {tries_left} tries left"
                )));
            }
        };
        let etc_from = match etc_kind {
            0 if etc_id == 0 && etc_alg == 0 && etc_image == [0; DIGEST_FIELD] => EtcFrom::Nothing,
            1 if etc_id == 0 => EtcFrom::Image(digest_field(
                etc_alg,
                &etc_image,
                &format!("{what}'s /etc source"),
            )?),
            2 if etc_id != 0 && etc_alg == 0 && etc_image == [0; DIGEST_FIELD] => {
                EtcFrom::Deployment(etc_id)
            }
            _ => return Err(invalid(format!("{what} has a malformed /etc source"))),
        };
        let tag = match tag {
            [] => None,
            t => Some(
                std::str::from_utf8(t)
                    .map_err(|_| invalid(format!("{what}'s tag is not UTF-8")))?
                    .to_owned(),
            ),
        };
        let note = std::str::from_utf8(note)
            .map_err(|_| invalid(format!("{what}'s note is not UTF-8")))?
            .to_owned();
        deployments.push(Deployment {
            id,
            image,
            tag,
            deployed_at,
            tries,
            status,
            boots,
            changed_at,
            etc_from,
            note,
        });
    }
    if r.remaining() != 0 {
        return Err(invalid(format!(
            "{} bytes after the last deployment",
            r.remaining()
        )));
    }
    Ok(DeploymentState {
        generation,
        next_id,
        keep,
        default,
        deployments,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use imgmount_format::verity::digest_bytes;

    pub fn image(n: u8) -> Digest {
        digest_bytes(HashAlg::Sha256, &[n])
    }

    pub fn deployment(id: u32, n: u8, status: Status) -> Deployment {
        Deployment {
            id,
            image: image(n),
            tag: Some(format!("v{n}")),
            deployed_at: 1_700_000_000 + u64::from(id),
            tries: 3,
            status,
            boots: 0,
            changed_at: 1_700_000_000,
            etc_from: if id > 1 {
                EtcFrom::Deployment(id - 1)
            } else {
                EtcFrom::Nothing
            },
            note: String::new(),
        }
    }

    pub fn sample() -> DeploymentState {
        let mut bad = deployment(2, 2, Status::Bad);
        bad.note = "required health check 50-app failed (exit status 1): no answer".into();
        let mut pinned = deployment(3, 3, Status::Pending { tries_left: 2 });
        pinned.etc_from = EtcFrom::Image(digest_bytes(HashAlg::Sha512, b"pinned"));
        pinned.tag = None;
        DeploymentState {
            generation: 7,
            next_id: 4,
            keep: 3,
            default: Some(3),
            deployments: vec![deployment(1, 1, Status::Good), bad, pinned],
        }
    }

    #[test]
    fn round_trips() {
        for s in [DeploymentState::empty(), sample()] {
            let bytes = s.encode().unwrap();
            assert_eq!(DeploymentState::decode(&bytes).unwrap(), s);
        }
        let s = sample();
        let bytes = s.encode().unwrap();
        let tags_and_notes: usize = s
            .deployments
            .iter()
            .map(|d| d.tag.as_deref().unwrap_or("").len() + d.note.len())
            .sum();
        assert_eq!(
            bytes.len(),
            HEADER + BODY_FIXED + 3 * DEPLOYMENT_FIXED + tags_and_notes + 32,
            "the documented layout"
        );
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(DeploymentState::decode(&bytes[..len]).is_err(), "{len}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(DeploymentState::decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(DeploymentState::decode(&long).is_err());
    }

    /// A file with a correct checksum can still lie: every invariant is checked on reading.
    #[test]
    fn a_well_summed_lie_is_refused() {
        fn reseal(mut b: Vec<u8>) -> Vec<u8> {
            let n = b.len() - 32;
            let sum = Sha256::digest(&b[..n]);
            b[n..].copy_from_slice(&sum);
            b
        }
        let good = sample().encode().unwrap();
        let first = HEADER + BODY_FIXED;
        type Change = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Change)> = vec![
            ("keep 1", Box::new(|b| b[HEADER + 12] = 1)),
            ("default missing", Box::new(|b| b[HEADER + 16] = 9)),
            ("status 7", Box::new(move |b| b[first + 5] = 7)),
            ("good with tries left", Box::new(move |b| b[first + 7] = 1)),
            ("zero tries", Box::new(move |b| b[first + 6] = 0)),
            ("unknown algorithm", Box::new(move |b| b[first + 4] = 9)),
            ("digest padding", Box::new(move |b| b[first + 8 + 40] = 1)),
            ("id beyond next_id", Box::new(move |b| b[first] = 200)),
            ("reserved", Box::new(move |b| b[first + 95] = 1)),
            ("a huge count", Box::new(|b| b[HEADER + 13] = 200)),
        ];
        for (what, change) in cases {
            let mut b = good.clone();
            change(&mut b);
            let err = DeploymentState::decode(&reseal(b)).unwrap_err();
            assert!(
                matches!(err, StateError::Invalid(_) | StateError::Truncated(_)),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn invariants_are_checked_before_writing() {
        let mut s = sample();
        s.default = Some(42);
        assert!(s.encode().is_err());
        let mut s = sample();
        s.deployments.swap(0, 1);
        assert!(s.encode().is_err(), "ids out of order");
        let mut s = sample();
        s.deployments[0].note = "line\nbreak".into();
        assert!(s.encode().is_err());
        let mut s = sample();
        s.deployments[2].status = Status::Pending { tries_left: 4 };
        assert!(s.encode().is_err());
    }

    #[test]
    fn notes_are_cleaned() {
        assert_eq!(clean_note(" a\nb\tc \n"), "a b c");
        let long = "é".repeat(MAX_NOTE);
        let n = clean_note(&long);
        assert!(n.len() <= MAX_NOTE && n.ends_with("..."));
    }

    #[test]
    fn rollback_target_is_the_newest_good_but_the_default() {
        let mut s = sample();
        s.deployments.push(deployment(5, 5, Status::Good));
        s.next_id = 6;
        s.default = Some(5);
        assert_eq!(s.rollback_target().map(|d| d.id), Some(1));
        s.default = Some(1);
        assert_eq!(s.rollback_target().map(|d| d.id), Some(5));
    }
}
