//! Extended attributes: the per-inode xattr area (a header with the bloom filter and the
//! shared xattr ids, then inline entries) and the shared xattr table.

use std::borrow::Cow;

use super::{Image, ImageError, Inode, corrupt};
use crate::erofs::format::{
    FEATURE_COMPAT_XATTR_FILTER, XattrBodyHeader, XattrEntryHeader, split_xattr_name,
    xattr_filter_bit, xattr_prefix,
};

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr<'a> {
    /// Full name, prefix restored (`user.foo`).
    pub name: Cow<'a, [u8]>,
    pub value: &'a [u8],
}

/// An entry as stored: prefix index, name suffix, value.
#[derive(Clone, Copy)]
struct RawXattr<'a> {
    index: u8,
    suffix: &'a [u8],
    value: &'a [u8],
}

impl<'a> RawXattr<'a> {
    fn prefix(&self, nid: u64) -> Result<&'static [u8], ImageError> {
        // Index 0x80 and up names a long prefix (the refused xattr_prefixes feature).
        xattr_prefix(self.index)
            .ok_or_else(|| corrupt(nid, format!("unknown xattr name index {}", self.index)))
    }

    fn matches(&self, nid: u64, name: &[u8]) -> Result<bool, ImageError> {
        Ok(name.strip_prefix(self.prefix(nid)?) == Some(self.suffix))
    }

    fn to_xattr(self, nid: u64) -> Result<Xattr<'a>, ImageError> {
        let prefix = self.prefix(nid)?;
        let name = if prefix.is_empty() {
            Cow::Borrowed(self.suffix)
        } else {
            Cow::Owned([prefix, self.suffix].concat())
        };
        Ok(Xattr {
            name,
            value: self.value,
        })
    }
}

/// Parses the entry at the start of `b`, returning it and its padded size.
fn parse_entry(b: &[u8], nid: u64) -> Result<(RawXattr<'_>, usize), ImageError> {
    let h = XattrEntryHeader::parse(b).ok_or_else(|| corrupt(nid, "truncated xattr entry"))?;
    let name_end = XattrEntryHeader::SIZE + usize::from(h.name_len);
    let value_end = name_end + usize::from(h.value_size);
    let (Some(suffix), Some(value)) = (
        b.get(XattrEntryHeader::SIZE..name_end),
        b.get(name_end..value_end),
    ) else {
        return Err(corrupt(nid, "xattr entry runs past its area"));
    };
    Ok((
        RawXattr {
            index: h.name_index,
            suffix,
            value,
        },
        h.entry_size(),
    ))
}

/// The pieces of an inode's xattr area.
struct XattrArea<'a> {
    header: XattrBodyHeader,
    shared_ids: &'a [u8],
    inline: &'a [u8],
}

impl Image {
    fn xattr_area<'a>(&'a self, inode: &Inode<'a>) -> Result<Option<XattrArea<'a>>, ImageError> {
        if inode.xattr_size == 0 {
            return Ok(None);
        }
        let nid = inode.nid;
        let area = self
            .slice(inode.xattr_pos, inode.xattr_size)
            .ok_or_else(|| corrupt(nid, "xattr area runs past the end of the image"))?;
        let header =
            XattrBodyHeader::parse(area).ok_or_else(|| corrupt(nid, "xattr area too short"))?;
        let ids_end = XattrBodyHeader::SIZE + 4 * usize::from(header.shared_count);
        let (Some(shared_ids), Some(inline)) = (
            area.get(XattrBodyHeader::SIZE..ids_end),
            area.get(ids_end..),
        ) else {
            return Err(corrupt(nid, "shared xattr count exceeds the xattr area"));
        };
        Ok(Some(XattrArea {
            header,
            shared_ids,
            inline,
        }))
    }

    /// The shared xattr `id`, at `xattr_blkaddr * 4096 + id * 4`.
    fn shared_xattr(&self, nid: u64, id: u32) -> Result<RawXattr<'_>, ImageError> {
        let pos = self
            .xattr_base
            .checked_add(u64::from(id) * 4)
            .and_then(|p| usize::try_from(p).ok())
            .and_then(|p| self.bytes().get(p..))
            .ok_or_else(|| corrupt(nid, format!("shared xattr {id} lies outside the image")))?;
        parse_entry(pos, nid).map(|(x, _)| x)
    }

    /// Calls `f` on every xattr of `inode`, shared ones first, until it returns `Some`.
    fn each_xattr<'a, T>(
        &'a self,
        inode: &Inode<'a>,
        mut f: impl FnMut(RawXattr<'a>) -> Result<Option<T>, ImageError>,
    ) -> Result<Option<T>, ImageError> {
        let Some(area) = self.xattr_area(inode)? else {
            return Ok(None);
        };
        for id in area.shared_ids.chunks_exact(4) {
            let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
            if let Some(r) = f(self.shared_xattr(inode.nid, id)?)? {
                return Ok(Some(r));
            }
        }
        let mut rest = area.inline;
        while !rest.is_empty() {
            let (x, size) = parse_entry(rest, inode.nid)?;
            if let Some(r) = f(x)? {
                return Ok(Some(r));
            }
            rest = rest.get(size..).unwrap_or_default();
        }
        Ok(None)
    }

    /// All xattrs of `inode`: shared ones first (in the inode's order), then inline ones,
    /// with full names.
    pub fn xattrs<'a>(&'a self, inode: &Inode<'a>) -> Result<Vec<Xattr<'a>>, ImageError> {
        let mut out = Vec::new();
        self.each_xattr(inode, |x| {
            out.push(x.to_xattr(inode.nid)?);
            Ok(None::<()>)
        })?;
        Ok(out)
    }

    /// The value of the xattr with full name `name`, if `inode` has it.
    ///
    /// With `FEATURE_COMPAT_XATTR_FILTER` the inode's bloom filter is consulted first: a set
    /// bit `xxh32(suffix, seed + index) % 32` means no xattr with that name exists (writers
    /// store the complement of the bits of the names present). Names without a known prefix
    /// skip the filter, because writers disagree on how to split them.
    pub fn get_xattr<'a>(
        &'a self,
        inode: &Inode<'a>,
        name: &[u8],
    ) -> Result<Option<&'a [u8]>, ImageError> {
        let Some(area) = self.xattr_area(inode)? else {
            return Ok(None);
        };
        let sb = &self.sb;
        if sb.feature_compat & FEATURE_COMPAT_XATTR_FILTER != 0 && sb.xattr_filter_reserved == 0 {
            let (index, suffix) = split_xattr_name(name);
            if index != 0 && area.header.name_filter & xattr_filter_bit(index, suffix) != 0 {
                return Ok(None);
            }
        }
        self.each_xattr(inode, |x| {
            Ok(x.matches(inode.nid, name)?.then_some(x.value))
        })
    }
}
