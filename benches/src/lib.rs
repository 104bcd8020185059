//! Fixtures the benchmarks in `benches/` share.

/// The name of entry `i` of [`dir_image`]'s directory: distinct, not in sorted order of `i`.
pub fn entry_name(i: usize) -> String {
    format!("file-{i:06}-{:x}", i.wrapping_mul(0x9E37_79B9) & 0xffff)
}

/// A composefs image (written by the composefs crate, so benchmarks do not depend on our
/// writer) whose directory `/big` holds `entries` empty regular files named by
/// [`entry_name`].
pub fn dir_image(entries: usize) -> Vec<u8> {
    let mut dump = String::from("/ 0 40755 3 0 0 0 1700000000.0 - - -\n");
    dump += "/big 0 40755 2 0 0 0 1700000000.0 - - -\n";
    for i in 0..entries {
        dump += &format!(
            "/big/{} 0 100644 1 0 0 0 1700000000.0 - - -\n",
            entry_name(i)
        );
    }
    let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<
        composefs::fsverity::Sha256HashValue,
    >(&dump)
    .expect("dumpfile");
    composefs::erofs::writer::mkfs_erofs_versioned(&fs, composefs::erofs::format::FormatVersion::V0)
        .into_vec()
}

/// `count` names of [`dir_image`]'s entries in a fixed pseudo-random order.
pub fn random_names(entries: usize, count: usize) -> Vec<Vec<u8>> {
    let mut x = 0x1234_5678_u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            entry_name(x as usize % entries).into_bytes()
        })
        .collect()
}
