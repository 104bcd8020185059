//! SHA-256 of several fs-verity blocks at once, interleaved on the x86 SHA extensions.
//!
//! Every message fs-verity hashes in bulk is one 4096-byte block (a data block, zero padded,
//! or a tree block), so each is 64 compressions of its data plus one of a fixed padding
//! block. One SHA-256 stream is a single dependency chain: each `sha256rnds2` waits for the
//! previous one, and the SHA unit sits idle between them. Hashing independent blocks with
//! their instructions interleaved fills those gaps, which is the idea of Linux's
//! `sha256_finup_2x` (used by fs-verity and dm-verity). [`LANES`] blocks are hashed together.
//!
//! All `unsafe` of the SHA-256 code lives here: the intrinsics are only reachable through a
//! [`Sha256Ni`] token, which exists only once the CPU has been seen to support them.

use super::BLOCK_SIZE;

/// Number of blocks hashed together. Measured on this project's AMD EPYC machines (SHA-NI,
/// one core, 4096-byte blocks, best of 5 over 64 MiB, machine shared): 1 lane 1.5-1.6 GiB/s,
/// 2 lanes 2.4-2.8, 3 lanes 2.2-2.9, 4 lanes 2.0-2.8 (sha2: 1.0-1.6). Two lanes get nearly
/// all of it; more lanes no longer fit in the sixteen xmm registers the SHA instructions can
/// use, and leave a longer remainder for reads of a few blocks.
pub(crate) const LANES: usize = 2;

/// Proof that the CPU has the SHA extensions and the SSE levels the code below uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sha256Ni(Token);

/// What a [`Sha256Ni`] holds: nothing on x86_64, and a type with no values elsewhere, so that
/// no token can exist where the instructions do not.
#[cfg(target_arch = "x86_64")]
type Token = ();
#[cfg(not(target_arch = "x86_64"))]
type Token = std::convert::Infallible;

impl Sha256Ni {
    /// The token, if this CPU can run the interleaved code. `is_x86_feature_detected!`
    /// caches its answer, so this is a load and a test after the first call.
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("sha")
                && std::is_x86_feature_detected!("sse2")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("sse4.1")
            {
                return Some(Sha256Ni(()));
            }
        }
        None
    }

    /// SHA-256 of each of `blocks`, each one whole 4096-byte message.
    #[inline]
    pub(crate) fn hash_blocks<const N: usize>(
        self,
        blocks: [&[u8; BLOCK_SIZE]; N],
    ) -> [[u8; 32]; N] {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: a `Sha256Ni` is only made by `detect`, after the CPU reported every
            // feature `ni::hash_4k` is compiled for.
            unsafe { ni::hash_4k(blocks) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = blocks;
            match self.0 {}
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_loadu_si128, _mm_set_epi32,
        _mm_set_epi64x, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32,
        _mm_shuffle_epi8, _mm_shuffle_epi32, _mm_storeu_si128,
    };

    use super::BLOCK_SIZE;

    /// The SHA-256 round constants.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    /// The initial hash value, a..h.
    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// The padding block of a 4096-byte message: the 0x80 marker, zeros, and the length in
    /// bits (32768) as a big-endian u64.
    static PAD: [u8; 64] = {
        let mut b = [0u8; 64];
        b[0] = 0x80;
        let bits = (super::BLOCK_SIZE as u64 * 8).to_be_bytes();
        let mut i = 0;
        while i < 8 {
            b[56 + i] = bits[i];
            i += 1;
        }
        b
    };

    /// Reverses the bytes of each 32-bit lane: SHA-256 words are big endian.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn bswap_mask() -> __m128i {
        _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203)
    }

    /// Round constants `K[4g..4g + 4]`, lane 0 first.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn k4(g: usize) -> __m128i {
        let k = |i: usize| K[4 * g + i] as i32;
        _mm_set_epi32(k(3), k(2), k(1), k(0))
    }

    /// The state as the SHA instructions hold it: `abef` has a, b, e, f in lanes 3..0,
    /// `cdgh` has c, d, g, h.
    #[derive(Clone, Copy)]
    struct State {
        abef: __m128i,
        cdgh: __m128i,
    }

    /// Hashes `N` whole 4096-byte messages together, each step of one lane followed by the
    /// same step of the others, so their dependency chains overlap.
    ///
    /// # Safety
    ///
    /// The CPU must support SHA, SSE2, SSSE3 and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn hash_4k<const N: usize>(blocks: [&[u8; BLOCK_SIZE]; N]) -> [[u8; 32]; N] {
        let h = |i: usize| H0[i] as i32;
        let init = State {
            abef: _mm_set_epi32(h(0), h(1), h(4), h(5)),
            cdgh: _mm_set_epi32(h(2), h(3), h(6), h(7)),
        };
        let mut state = [init; N];
        // The 64 chunks of the data, then the padding block, all in this one function so
        // that the state stays in registers from one compression to the next.
        for chunk in 0..=BLOCK_SIZE / 64 {
            let start = state;
            // w[l][g % 4]: the message words of round group g of lane l (a ring of four).
            let mut w: [[__m128i; 4]; N] = std::array::from_fn(|l| {
                load(blocks[l].as_chunks::<64>().0.get(chunk).unwrap_or(&PAD))
            });

            // Rounds 4g..4g+4 of every lane.
            macro_rules! rounds {
                ($g:expr) => {{
                    let g: usize = $g;
                    let k = k4(g);
                    for ring in &mut w {
                        if g >= 4 {
                            // W[4g..4g+4] from the four groups before it.
                            let t = _mm_sha256msg1_epu32(ring[g % 4], ring[(g + 1) % 4]);
                            let w9 = _mm_alignr_epi8(ring[(g + 3) % 4], ring[(g + 2) % 4], 4);
                            let t = _mm_add_epi32(t, w9);
                            ring[g % 4] = _mm_sha256msg2_epu32(t, ring[(g + 3) % 4]);
                        }
                    }
                    for (s, ring) in state.iter_mut().zip(&w) {
                        let wk = _mm_add_epi32(ring[g % 4], k);
                        // Two rounds: the new a, b, e, f; the old ones become c, d, g, h.
                        s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, wk);
                        let wk_hi = _mm_shuffle_epi32(wk, 0x0e);
                        s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, wk_hi);
                    }
                }};
            }
            rounds!(0);
            rounds!(1);
            rounds!(2);
            rounds!(3);
            rounds!(4);
            rounds!(5);
            rounds!(6);
            rounds!(7);
            rounds!(8);
            rounds!(9);
            rounds!(10);
            rounds!(11);
            rounds!(12);
            rounds!(13);
            rounds!(14);
            rounds!(15);

            for (s, s0) in state.iter_mut().zip(&start) {
                s.abef = _mm_add_epi32(s.abef, s0.abef);
                s.cdgh = _mm_add_epi32(s.cdgh, s0.cdgh);
            }
        }
        std::array::from_fn(|l| store(state[l]))
    }

    /// Loads the four message vectors of a 64-byte chunk, words in lanes 0..3.
    #[inline]
    #[target_feature(enable = "sse2,ssse3")]
    fn load(chunk: &[u8; 64]) -> [__m128i; 4] {
        let mask = bswap_mask();
        std::array::from_fn(|i| {
            // SAFETY: `chunk` is 64 readable bytes, so bytes 16i..16i+16 (i < 4) are in
            // bounds; the load has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(chunk.as_ptr().add(16 * i).cast()) };
            _mm_shuffle_epi8(v, mask)
        })
    }

    /// The digest bytes of a final state.
    #[inline]
    #[target_feature(enable = "sse2,ssse3,sse4.1")]
    fn store(s: State) -> [u8; 32] {
        // abef holds f, e, b, a in lanes 0..3 and cdgh holds h, g, d, c: put a..d and e..h
        // in order, then make each word big endian.
        let abef = _mm_shuffle_epi32(s.abef, 0x1b); // now a, b, e, f in lanes 0..3
        let ghcd = _mm_shuffle_epi32(s.cdgh, 0xb1); // now g, h, c, d in lanes 0..3
        let abcd = _mm_blend_epi16(abef, ghcd, 0xf0);
        let efgh = _mm_alignr_epi8(ghcd, abef, 8);
        let mask = bswap_mask();
        let mut out = [0u8; 32];
        // SAFETY: `out` is 32 writable bytes: two unaligned 16-byte stores at 0 and 16.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_shuffle_epi8(abcd, mask));
            _mm_storeu_si128(
                out.as_mut_ptr().add(16).cast(),
                _mm_shuffle_epi8(efgh, mask),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::Digest as _;

    use super::*;

    fn lanes<const N: usize>(ni: Sha256Ni, data: &[u8]) -> Result<(), TestCaseError> {
        let blocks: [&[u8; BLOCK_SIZE]; N] =
            std::array::from_fn(|l| &data.as_chunks::<BLOCK_SIZE>().0[l]);
        let got = ni.hash_blocks::<N>(blocks);
        for (l, block) in blocks.iter().enumerate() {
            prop_assert_eq!(&got[l][..], &sha2::Sha256::digest(block)[..], "lane {}", l);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Each lane gives exactly what sha2 gives for its block, whatever the other lanes
        /// hold (random bytes, or bytes mostly equal to a neighbour's).
        #[test]
        fn every_lane_matches_sha2(
            seed in prop::collection::vec(any::<u8>(), 4 * BLOCK_SIZE),
            copy_lane in any::<bool>(),
            flip in 0usize..BLOCK_SIZE,
        ) {
            let Some(ni) = Sha256Ni::detect() else {
                eprintln!("skipping: this CPU has no SHA extensions");
                return Ok(());
            };
            let mut data = seed;
            if copy_lane {
                // Lane 1 differs from lane 0 in one bit only.
                data.copy_within(0..BLOCK_SIZE, BLOCK_SIZE);
                data[BLOCK_SIZE + flip] ^= 1;
            }
            lanes::<1>(ni, &data)?;
            lanes::<2>(ni, &data)?;
            lanes::<3>(ni, &data)?;
            lanes::<4>(ni, &data)?;
        }
    }

    #[test]
    fn known_blocks() {
        let Some(ni) = Sha256Ni::detect() else {
            eprintln!("skipping: this CPU has no SHA extensions");
            return;
        };
        let zeros = [0u8; BLOCK_SIZE];
        let ones = [0xffu8; BLOCK_SIZE];
        let [z, o] = ni.hash_blocks([&zeros, &ones]);
        // `head -c 4096 /dev/zero | sha256sum`
        assert_eq!(
            hex::encode(z),
            "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"
        );
        assert_eq!(&o[..], &sha2::Sha256::digest(ones)[..]);
    }
}
