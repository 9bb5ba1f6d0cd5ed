//! Sealed objects: the encrypted, chunked form in which every object leaves the hub.
//!
//! ```text
//! header (HEADER_LEN = 64 bytes, big endian)
//!   0..8    magic "SNDTIER1"
//!   8..12   version (1)
//!   12..16  chunk size C (power of two, 4 KiB ..= 16 MiB)
//!   16..24  plaintext length L (<= MAX_PLAIN_LEN)
//!   24..56  salt: 32 random bytes, fresh for each object
//!   56..64  reserved, zero
//! chunk i (0 <= i < ceil(L / C)), at HEADER_LEN + i * (C + TAG_LEN):
//!   ChaCha20-Poly1305(key = HKDF-SHA256(salt, master key, "sendense-tier chunk key v1"),
//!                     nonce = 0u32 || i as u64, aad = header || object name)
//!   of the plaintext bytes i*C .. min((i+1)*C, L), then the 16-byte tag
//! ```
//!
//! The per-object key makes nonce reuse impossible across objects (each has its own salt),
//! and the index nonce within one. The header in the associated data binds every chunk to
//! the object's length and salt (a chunk moved to another object, or an object cut short,
//! fails), and the object name binds it to its place in the bucket.

use std::ops::Range;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::TierError;

/// Bytes of the header before the first chunk.
pub const HEADER_LEN: usize = 64;
/// Bytes of the authentication tag after each chunk's ciphertext.
pub const TAG_LEN: usize = 16;
/// The chunk size the hub writes: 1 MiB of plaintext per chunk.
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size accepted (bounds what one chunk read allocates).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Largest plaintext accepted: 1 PiB.
pub const MAX_PLAIN_LEN: u64 = 1 << 50;
/// The header's magic.
pub const MAGIC: &[u8; 8] = b"SNDTIER1";
/// The format version written and read.
pub const VERSION: u32 = 1;

const KEY_INFO: &[u8] = b"sendense-tier chunk key v1";
const SALT_LEN: usize = 32;

/// The hub's 256-bit master key (`DATA/tier.key`). Never printed.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// [`TierError::Random`] when the system's random source fails.
    pub fn generate() -> Result<Self, TierError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| TierError::Random)?;
        Ok(Self(key))
    }

    /// The key from its 32 raw bytes.
    ///
    /// # Errors
    /// [`TierError::BadKey`] unless exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TierError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| TierError::BadKey)
    }

    /// The key from 64 hex digits (surrounding white space ignored), as exported.
    ///
    /// # Errors
    /// [`TierError::BadKey`] unless exactly 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, TierError> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return Err(TierError::BadKey);
        }
        let mut key = [0u8; 32];
        for (out, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or(TierError::BadKey)?;
            let lo = hex_value(pair[1]).ok_or(TierError::BadKey)?;
            *out = (hi << 4) | lo;
        }
        Ok(Self(key))
    }

    /// The raw bytes (to store in the key file).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits (for export).
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// A sealed object's header: what the reader needs to find and open any chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    chunk_size: u32,
    plain_len: u64,
    salt: [u8; SALT_LEN],
}

impl Header {
    /// A header with a fresh random salt for `plain_len` bytes in chunks of `chunk_size`.
    ///
    /// # Errors
    /// [`TierError::BadChunkSize`], [`TierError::TooLarge`], [`TierError::Random`].
    pub fn random(chunk_size: u32, plain_len: u64) -> Result<Self, TierError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| TierError::Random)?;
        Self::new(chunk_size, plain_len, salt)
    }

    /// A header with the given salt (a resumed upload re-creates the header it started with).
    ///
    /// # Errors
    /// [`TierError::BadChunkSize`], [`TierError::TooLarge`].
    pub fn new(chunk_size: u32, plain_len: u64, salt: [u8; 32]) -> Result<Self, TierError> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(TierError::BadChunkSize { size: chunk_size });
        }
        if plain_len > MAX_PLAIN_LEN {
            return Err(TierError::TooLarge {
                len: plain_len,
                max: MAX_PLAIN_LEN,
            });
        }
        Ok(Self {
            chunk_size,
            plain_len,
            salt,
        })
    }

    /// The header's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_be_bytes());
        out[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[16..24].copy_from_slice(&self.plain_len.to_be_bytes());
        out[24..56].copy_from_slice(&self.salt);
        out
    }

    /// Parses the first [`HEADER_LEN`] bytes of `bytes` (more may follow).
    ///
    /// # Errors
    /// [`TierError::Truncated`], [`TierError::BadMagic`], [`TierError::UnsupportedVersion`],
    /// [`TierError::BadChunkSize`], [`TierError::TooLarge`], [`TierError::Reserved`].
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        let Some(head) = bytes.get(..HEADER_LEN) else {
            return Err(TierError::Truncated {
                need: HEADER_LEN as u64,
                have: bytes.len() as u64,
            });
        };
        if &head[0..8] != MAGIC {
            return Err(TierError::BadMagic);
        }
        let version = u32::from_be_bytes(array(&head[8..12]));
        if version != VERSION {
            return Err(TierError::UnsupportedVersion { version });
        }
        if head[56..64].iter().any(|&b| b != 0) {
            return Err(TierError::Reserved);
        }
        Self::new(
            u32::from_be_bytes(array(&head[12..16])),
            u64::from_be_bytes(array(&head[16..24])),
            array(&head[24..56]),
        )
    }

    /// The salt (recorded so that a resumed upload seals the same bytes again).
    #[must_use]
    pub fn salt(&self) -> [u8; 32] {
        self.salt
    }

    /// Plaintext bytes per chunk.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The plaintext's length.
    #[must_use]
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// How many chunks the object has.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        self.plain_len.div_ceil(u64::from(self.chunk_size))
    }

    /// The sealed object's length in bytes.
    #[must_use]
    pub fn sealed_len(&self) -> u64 {
        // Bounded by MAX_PLAIN_LEN: no overflow.
        HEADER_LEN as u64 + self.chunk_count() * TAG_LEN as u64 + self.plain_len
    }

    /// The plaintext range chunk `index` holds (empty past the end).
    #[must_use]
    pub fn plain_range(&self, index: u64) -> Range<u64> {
        let start = index
            .saturating_mul(u64::from(self.chunk_size))
            .min(self.plain_len);
        let end = start
            .saturating_add(u64::from(self.chunk_size))
            .min(self.plain_len);
        start..end
    }

    /// The byte range of chunk `index` (ciphertext and tag) in the sealed object.
    #[must_use]
    pub fn sealed_range(&self, index: u64) -> Range<u64> {
        let plain = self.plain_range(index);
        let stride = u64::from(self.chunk_size) + TAG_LEN as u64;
        let start = (HEADER_LEN as u64).saturating_add(index.saturating_mul(stride));
        start..start.saturating_add(plain.end - plain.start + TAG_LEN as u64)
    }

    /// The chunks holding plaintext bytes `range` (clipped to the object).
    #[must_use]
    pub fn chunks_covering(&self, range: Range<u64>) -> Range<u64> {
        let end = range.end.min(self.plain_len);
        if range.start >= end {
            return 0..0;
        }
        let size = u64::from(self.chunk_size);
        range.start / size..end.div_ceil(size)
    }
}

/// Seals and opens the chunks of one object (its header and name fixed).
pub struct ObjectCipher {
    key: LessSafeKey,
    aad: Vec<u8>,
    header: Header,
}

impl std::fmt::Debug for ObjectCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCipher")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl ObjectCipher {
    /// The cipher of the object named `name` with `header`, under `master`.
    ///
    /// # Errors
    /// [`TierError::BadKey`] if key derivation fails (it does not for 32-byte keys: HKDF-SHA256
    /// yields up to 8160 bytes, and ChaCha20-Poly1305 takes 32-byte keys).
    pub fn new(master: &MasterKey, header: Header, name: &str) -> Result<Self, TierError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt).extract(&master.0);
        let mut raw = [0u8; 32];
        prk.expand(&[KEY_INFO], Len32)
            .and_then(|okm| okm.fill(&mut raw))
            .map_err(|_| TierError::BadKey)?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &raw)
            .map(LessSafeKey::new)
            .map_err(|_| TierError::BadKey)?;
        let mut aad = header.encode().to_vec();
        aad.extend_from_slice(name.as_bytes());
        Ok(Self { key, aad, header })
    }

    /// The object's header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Seals chunk `index`, whose plaintext must be exactly [`Header::plain_range`] long;
    /// answers ciphertext and tag.
    ///
    /// # Errors
    /// [`TierError::BadChunk`] when the index or the length does not fit the header.
    pub fn seal(&self, index: u64, plain: &[u8]) -> Result<Vec<u8>, TierError> {
        let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
        buf.extend_from_slice(plain);
        let tag = self.seal_in_place(index, &mut buf)?;
        buf.extend_from_slice(&tag);
        Ok(buf)
    }

    /// Seals chunk `index` in place: `plain` (exactly [`Header::plain_range`] long) becomes
    /// its ciphertext; answers the tag that follows it in the object.
    ///
    /// # Errors
    /// [`TierError::BadChunk`] when the index or the length does not fit the header.
    pub fn seal_in_place(&self, index: u64, plain: &mut [u8]) -> Result<[u8; TAG_LEN], TierError> {
        let want = self.header.plain_range(index);
        if index >= self.header.chunk_count() || plain.len() as u64 != want.end - want.start {
            return Err(TierError::BadChunk { index });
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(index), Aad::from(&self.aad), plain)
            .map_err(|_| TierError::BadChunk { index })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens chunk `index` in place from its sealed bytes (ciphertext and tag); answers the
    /// plaintext, the front of `sealed`.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_in_place<'a>(
        &self,
        index: u64,
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], TierError> {
        let want = self.header.sealed_range(index);
        if index >= self.header.chunk_count() || sealed.len() as u64 != want.end - want.start {
            return Err(TierError::BadChunk { index });
        }
        self.key
            .open_in_place(nonce(index), Aad::from(&self.aad), sealed)
            .map_err(|_| TierError::Authentication { index })
    }

    /// Opens chunk `index` from its sealed bytes (ciphertext and tag) straight into `out`,
    /// which must be exactly its plaintext's length: one copy, no allocation. On an error
    /// `out` holds no plaintext (it may hold ciphertext).
    ///
    /// # Errors
    /// As [`Self::open`]; [`TierError::BadChunk`] also when `out` has the wrong length.
    pub fn open_into(&self, index: u64, sealed: &[u8], out: &mut [u8]) -> Result<(), TierError> {
        let want = self.header.sealed_range(index);
        if index >= self.header.chunk_count()
            || sealed.len() as u64 != want.end - want.start
            || out.len() + TAG_LEN != sealed.len()
        {
            return Err(TierError::BadChunk { index });
        }
        let (ciphertext, tag) = sealed.split_at(out.len());
        let tag = Tag::try_from(tag).map_err(|_| TierError::BadChunk { index })?;
        out.copy_from_slice(ciphertext);
        self.key
            .open_in_place_separate_tag(nonce(index), Aad::from(&self.aad), tag, out, 0..)
            .map(drop)
            .map_err(|_| TierError::Authentication { index })
    }

    /// Opens chunk `index` from its sealed bytes (ciphertext and tag); answers the plaintext.
    ///
    /// # Errors
    /// [`TierError::BadChunk`] when the index or length does not fit the header;
    /// [`TierError::Authentication`] when the chunk does not open.
    pub fn open(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, TierError> {
        let mut buf = sealed.to_vec();
        let plain_len = self.open_in_place(index, &mut buf)?.len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Seals a whole small object (manifests, digests, configurations) with a fresh salt.
///
/// # Errors
/// [`TierError::TooLarge`], [`TierError::Random`].
pub fn seal_all(master: &MasterKey, name: &str, plain: &[u8]) -> Result<Vec<u8>, TierError> {
    let header = Header::random(CHUNK_SIZE, plain.len() as u64)?;
    let cipher = ObjectCipher::new(master, header, name)?;
    let mut out = Vec::with_capacity(usize::try_from(header.sealed_len()).unwrap_or(0));
    out.extend_from_slice(&header.encode());
    for index in 0..header.chunk_count() {
        let range = header.plain_range(index);
        // Ranges lie inside `plain` by construction.
        let chunk = plain
            .get(to_usize(range.start)..to_usize(range.end))
            .ok_or(TierError::BadChunk { index })?;
        out.extend_from_slice(&cipher.seal(index, chunk)?);
    }
    Ok(out)
}

/// Opens a whole sealed object named `name`, refusing one whose plaintext exceeds `max_plain`
/// bytes (before reading any chunk) or whose length does not match its header.
///
/// # Errors
/// Any [`Header::decode`] error; [`TierError::TooLarge`]; [`TierError::Truncated`] when
/// `sealed` has another length than the header says; [`TierError::Authentication`].
pub fn open_all(
    master: &MasterKey,
    name: &str,
    sealed: &[u8],
    max_plain: u64,
) -> Result<Vec<u8>, TierError> {
    let header = Header::decode(sealed)?;
    if header.plain_len() > max_plain {
        return Err(TierError::TooLarge {
            len: header.plain_len(),
            max: max_plain,
        });
    }
    if sealed.len() as u64 != header.sealed_len() {
        return Err(TierError::Truncated {
            need: header.sealed_len(),
            have: sealed.len() as u64,
        });
    }
    let cipher = ObjectCipher::new(master, header, name)?;
    let mut out = Vec::with_capacity(to_usize(header.plain_len()));
    for index in 0..header.chunk_count() {
        let range = header.sealed_range(index);
        let chunk = sealed
            .get(to_usize(range.start)..to_usize(range.end))
            .ok_or(TierError::BadChunk { index })?;
        out.extend_from_slice(&cipher.open(index, chunk)?);
    }
    Ok(out)
}

/// Lowercase hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// `u64 -> usize`, saturating (lengths here are bounded by what was allocated already).
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// The HKDF output length of a 32-byte key.
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

#[cfg(test)]
// Test sizes are small: the casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn seal_all_then_open_all_round_trips_across_chunks() {
        let plain: Vec<u8> = (0..(3 * CHUNK_SIZE as usize + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let sealed = seal_all(&key(), "a/b", &plain).unwrap();
        assert_eq!(open_all(&key(), "a/b", &sealed, u64::MAX).unwrap(), plain);
    }

    #[test]
    fn in_place_seal_and_open_match_the_copying_ones() {
        let header = Header::new(4096, 4096 * 2 + 100, [7; 32]).unwrap();
        let cipher = ObjectCipher::new(&key(), header, "n").unwrap();
        for index in 0..header.chunk_count() {
            let range = header.plain_range(index);
            let plain: Vec<u8> = (range.start..range.end).map(|i| (i % 251) as u8).collect();
            let mut buf = plain.clone();
            let tag = cipher.seal_in_place(index, &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(buf, cipher.seal(index, &plain).unwrap());
            let mut out = vec![0u8; plain.len()];
            cipher.open_into(index, &buf, &mut out).unwrap();
            assert_eq!(out, plain);
            assert_eq!(
                cipher.open_into(index, &buf, &mut out[1..]),
                Err(TierError::BadChunk { index })
            );
            assert_eq!(cipher.open_in_place(index, &mut buf).unwrap(), &plain[..]);
        }
        let mut short = vec![0u8; 10];
        assert_eq!(
            cipher.seal_in_place(0, &mut short),
            Err(TierError::BadChunk { index: 0 })
        );
        let mut forged = cipher.seal(1, &vec![1u8; 4096]).unwrap();
        forged[0] ^= 1;
        let mut out = vec![0u8; 4096];
        assert_eq!(
            cipher.open_into(1, &forged, &mut out),
            Err(TierError::Authentication { index: 1 })
        );
        assert_eq!(
            cipher.open_in_place(1, &mut forged).map(|p| p.len()),
            Err(TierError::Authentication { index: 1 })
        );
    }

    #[test]
    fn sealed_object_holds_no_plaintext_marker() {
        let plain = b"SENDENSE-MARKER-0123456789".repeat(100);
        let sealed = seal_all(&key(), "x", &plain).unwrap();
        assert!(!sealed.windows(15).any(|w| w == b"SENDENSE-MARKER"));
    }

    #[test]
    fn open_under_other_name_fails_authentication() {
        let sealed = seal_all(&key(), "x", b"hello").unwrap();
        assert_eq!(
            open_all(&key(), "y", &sealed, 100),
            Err(TierError::Authentication { index: 0 })
        );
    }

    #[test]
    fn open_truncated_object_is_refused() {
        let sealed = seal_all(&key(), "x", &[1u8; 9000]).unwrap();
        assert!(matches!(
            open_all(&key(), "x", &sealed[..sealed.len() - 1], u64::MAX),
            Err(TierError::Truncated { .. })
        ));
    }

    #[test]
    fn open_over_limit_is_refused_before_reading() {
        let sealed = seal_all(&key(), "x", &[1u8; 100]).unwrap();
        assert!(matches!(
            open_all(&key(), "x", &sealed, 99),
            Err(TierError::TooLarge { .. })
        ));
    }

    #[test]
    fn flipped_ciphertext_bit_fails_authentication() {
        let mut sealed = seal_all(&key(), "x", &[5u8; 100]).unwrap();
        sealed[HEADER_LEN + 3] ^= 1;
        assert_eq!(
            open_all(&key(), "x", &sealed, u64::MAX),
            Err(TierError::Authentication { index: 0 })
        );
    }

    #[test]
    fn chunks_covering_middle_range_spans_its_chunks() {
        let header = Header::new(MIN_CHUNK_SIZE, 10 * 4096, [0; 32]).unwrap();
        assert_eq!(header.chunks_covering(4095..8193), 0..3);
        assert_eq!(header.chunks_covering(50_000..60_000), 0..0);
    }

    #[test]
    fn master_key_hex_round_trips() {
        let k = MasterKey::generate().unwrap();
        assert_eq!(
            MasterKey::from_hex(&k.to_hex()).unwrap().as_bytes(),
            k.as_bytes()
        );
        assert!(matches!(MasterKey::from_hex("zz"), Err(TierError::BadKey)));
    }

    proptest! {
        #[test]
        fn header_decode_encode_round_trips(
            shift in 12u32..=24,
            len in 0u64..=MAX_PLAIN_LEN,
            salt in any::<[u8; 32]>(),
        ) {
            let header = Header::new(1 << shift, len, salt).unwrap();
            prop_assert_eq!(Header::decode(&header.encode()).unwrap(), header);
        }

        #[test]
        fn chunk_seal_open_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let header = Header::new(MIN_CHUNK_SIZE, data.len() as u64, [3; 32]).unwrap();
            let cipher = ObjectCipher::new(&key(), header, "n").unwrap();
            for index in 0..header.chunk_count() {
                let r = header.plain_range(index);
                let sealed = cipher.seal(index, &data[r.start as usize..r.end as usize]).unwrap();
                prop_assert_eq!(sealed.len() as u64, header.sealed_range(index).end - header.sealed_range(index).start);
                prop_assert_eq!(cipher.open(index, &sealed).unwrap(), &data[r.start as usize..r.end as usize]);
            }
        }
    }
}
