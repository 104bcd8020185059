//! Directories: dirent blocks, iteration with resumable cookies, binary-search lookup, and
//! a bounded breadth-first walk.
//!
//! A directory's data is a sequence of blocks (the last one possibly the inline tail). Each
//! block starts with an array of 12-byte dirents; the first dirent's `nameoff` divided by 12
//! is the number of dirents in the block. Names follow the array, unterminated: a name ends
//! where the next one starts, and the block's last name ends at the first NUL or at the end
//! of the block's data. Names are sorted by bytes within and across blocks (`.` and `..`
//! included), which is what makes lookup a binary search.

use std::collections::{HashSet, VecDeque};

use super::{BLOCK, Image, ImageError, Inode, corrupt};
use crate::erofs::format::{DIRENT_SIZE, Dirent, FileType};

/// Longest name EROFS (and Linux) allows.
const MAX_NAME_LEN: usize = 255;

/// Longest path [`Image::walk`] builds. Deeper trees are refused rather than letting a
/// hostile chain of long names make the walk's memory quadratic.
pub const MAX_WALK_PATH: usize = 64 * 1024;

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub nid: u64,
    pub file_type: FileType,
    /// Cookie to pass to [`Image::read_dir`] to resume after this entry: the byte position
    /// of the next dirent in the directory data (`block * 4096 + index * 12`).
    pub next_offset: u64,
}

/// A validated directory block: its bytes and how many dirents it holds.
#[derive(Clone, Copy)]
struct DirBlock<'a> {
    data: &'a [u8],
    count: usize,
    nid: u64,
    blk: u64,
}

impl<'a> DirBlock<'a> {
    fn new(data: &'a [u8], nid: u64, blk: u64) -> Result<Self, ImageError> {
        let first = Dirent::parse(data)
            .ok_or_else(|| corrupt(nid, format!("directory block {blk} is too short")))?;
        let nameoff = usize::from(first.nameoff);
        if nameoff < DIRENT_SIZE || nameoff % DIRENT_SIZE != 0 || nameoff >= data.len() {
            return Err(corrupt(
                nid,
                format!("directory block {blk}: bad first nameoff {nameoff}"),
            ));
        }
        Ok(DirBlock {
            data,
            count: nameoff / DIRENT_SIZE,
            nid,
            blk,
        })
    }

    fn dirent(&self, i: usize) -> Result<Dirent, ImageError> {
        i.checked_mul(DIRENT_SIZE)
            .and_then(|off| self.data.get(off..))
            .and_then(Dirent::parse)
            .ok_or_else(|| self.bad(format!("dirent {i} is outside the block")))
    }

    fn bad(&self, what: String) -> ImageError {
        corrupt(self.nid, format!("directory block {}: {what}", self.blk))
    }

    /// Dirent `i` (which must be below `count`) and its name.
    fn entry(&self, i: usize) -> Result<(Dirent, &'a [u8]), ImageError> {
        let de = self.dirent(i)?;
        let start = usize::from(de.nameoff);
        let end = if i + 1 < self.count {
            usize::from(self.dirent(i + 1)?.nameoff)
        } else {
            // The last name runs to the end of the block's data, minus NUL padding.
            let rest = self.data.get(start..).unwrap_or_default();
            start + rest.iter().position(|b| *b == 0).unwrap_or(rest.len())
        };
        if start < self.count * DIRENT_SIZE {
            return Err(self.bad(format!("name {i} overlaps the dirent array")));
        }
        let name = self
            .data
            .get(start..end)
            .ok_or_else(|| self.bad(format!("name {i} has bad bounds {start}..{end}")))?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(self.bad(format!("name {i} has length {}", name.len())));
        }
        Ok((de, name))
    }
}

impl Image {
    fn check_dir(&self, dir: &Inode<'_>) -> Result<(), ImageError> {
        if !dir.is_dir() {
            return Err(ImageError::NotADirectory(dir.nid));
        }
        // Directory data is stored in the image, so it cannot be larger than the image. This
        // bounds the work of iterating a directory whose blocks a hostile image maps to one
        // place again and again.
        if dir.size() > self.bytes().len() as u64 {
            return Err(corrupt(
                dir.nid,
                format!("directory size {} exceeds the image size", dir.size()),
            ));
        }
        Ok(())
    }

    fn dir_block<'a>(&'a self, dir: &Inode<'a>, blk: u64) -> Result<DirBlock<'a>, ImageError> {
        let data = self
            .data_block(dir, blk)?
            .ok_or_else(|| corrupt(dir.nid, format!("directory block {blk} is a hole")))?;
        DirBlock::new(data, dir.nid, blk)
    }

    /// Finds `name` in `dir`: a binary search over the blocks by their first name, then a
    /// binary search within the one block that can hold it. Touches O(log n) blocks.
    pub fn lookup<'a>(
        &'a self,
        dir: &Inode<'a>,
        name: &[u8],
    ) -> Result<Option<DirEntry<'a>>, ImageError> {
        self.check_dir(dir)?;
        let nblocks = dir.size().div_ceil(BLOCK);
        // Find the last block whose first name is <= `name`.
        let (mut lo, mut hi) = (0u64, nblocks);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let block = self.dir_block(dir, mid)?;
            let (de, first) = block.entry(0)?;
            match first.cmp(name) {
                std::cmp::Ordering::Equal => {
                    return Ok(Some(make_entry(&block, 0, de, first)));
                }
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        let Some(blk) = lo.checked_sub(1) else {
            return Ok(None);
        };
        let block = self.dir_block(dir, blk)?;
        // Entry 0 is already known to be smaller than `name`.
        let (mut lo, mut hi) = (1usize, block.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (de, n) = block.entry(mid)?;
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(make_entry(&block, mid, de, n))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Iterates the entries of `dir` (including `.` and `..`) from the cookie `offset` (0
    /// for the start, else a [`DirEntry::next_offset`]). The iterator stops after the first
    /// error it yields.
    pub fn read_dir<'a>(&'a self, dir: &Inode<'a>, offset: u64) -> Result<DirIter<'a>, ImageError> {
        self.check_dir(dir)?;
        Ok(DirIter {
            image: self,
            dir: *dir,
            blk: offset / BLOCK,
            index: (offset % BLOCK) as usize / DIRENT_SIZE,
            block: None,
            done: false,
        })
    }

    /// Every nid reachable from the root, each once, breadth first, with the first path
    /// that reaches it (`/` for the root). A directory reached twice (a loop, or a hard
    /// link to a directory) is an error, so a hostile image cannot make this run forever;
    /// so is a total number of dirents larger than the image could honestly hold.
    pub fn walk(&self) -> Result<Vec<(Vec<u8>, u64)>, ImageError> {
        let mut out = Vec::new();
        self.walk_until(|path, nid| {
            out.push((path.to_vec(), nid));
            false
        })?;
        Ok(out)
    }

    /// The first path that reaches `nid` in [`Image::walk`]'s order, for messages about
    /// it; `None` when no directory names it.
    pub fn path_of(&self, nid: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let mut found = None;
        self.walk_until(|path, n| {
            if n == nid {
                found = Some(path.to_vec());
            }
            found.is_some()
        })?;
        Ok(found)
    }

    /// [`Image::walk`], calling `visit` with each path and nid until it returns true.
    pub fn walk_until(&self, mut visit: impl FnMut(&[u8], u64) -> bool) -> Result<(), ImageError> {
        let root = self.root()?;
        if visit(b"/", root.nid) {
            return Ok(());
        }
        let mut seen = HashSet::from([root.nid]);
        let mut queue = VecDeque::from([(b"/".to_vec(), root)]);
        // Every dirent takes 12 bytes plus a name in an honest image.
        let mut budget = self.bytes().len() / DIRENT_SIZE;
        while let Some((path, dir)) = queue.pop_front() {
            for entry in self.read_dir(&dir, 0)? {
                let entry = entry?;
                budget = budget.checked_sub(1).ok_or_else(|| {
                    corrupt(
                        dir.nid,
                        "more dirents than the image can hold: shared directory data",
                    )
                })?;
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let mut child_path = Vec::with_capacity(path.len() + 1 + entry.name.len());
                child_path.extend_from_slice(&path);
                if path != b"/" {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(entry.name);
                if child_path.len() > MAX_WALK_PATH {
                    return Err(corrupt(entry.nid, "path longer than the walk allows"));
                }
                let child = self.inode(entry.nid)?;
                if !seen.insert(entry.nid) {
                    if child.is_dir() {
                        return Err(corrupt(
                            entry.nid,
                            format!(
                                "directory reached twice (at {}): a loop or a hard-linked directory",
                                String::from_utf8_lossy(&child_path)
                            ),
                        ));
                    }
                    continue;
                }
                if visit(&child_path, entry.nid) {
                    return Ok(());
                }
                if child.is_dir() {
                    queue.push_back((child_path, child));
                }
            }
        }
        Ok(())
    }
}

fn make_entry<'a>(block: &DirBlock<'a>, i: usize, de: Dirent, name: &'a [u8]) -> DirEntry<'a> {
    let next_offset = if i + 1 < block.count {
        block.blk * BLOCK + ((i + 1) * DIRENT_SIZE) as u64
    } else {
        (block.blk + 1) * BLOCK
    };
    DirEntry {
        name,
        nid: de.nid,
        file_type: FileType::from_raw(de.file_type),
        next_offset,
    }
}

/// Iterator over a directory's entries; see [`Image::read_dir`].
pub struct DirIter<'a> {
    image: &'a Image,
    dir: Inode<'a>,
    blk: u64,
    index: usize,
    block: Option<DirBlock<'a>>,
    done: bool,
}

impl<'a> Iterator for DirIter<'a> {
    type Item = Result<DirEntry<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.blk.checked_mul(BLOCK)? >= self.dir.size() {
                self.done = true;
                break;
            }
            let block = match self.block {
                Some(b) => b,
                None => match self.image.dir_block(&self.dir, self.blk) {
                    Ok(b) => *self.block.insert(b),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
            };
            if self.index >= block.count {
                self.blk += 1;
                self.index = 0;
                self.block = None;
                continue;
            }
            let i = self.index;
            self.index += 1;
            return Some(match block.entry(i) {
                Ok((de, name)) => Ok(make_entry(&block, i, de, name)),
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            });
        }
        None
    }
}
