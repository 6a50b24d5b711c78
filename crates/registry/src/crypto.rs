//! Encryption at rest: AES-256-GCM over fixed-size segments, so a byte range of a stored
//! object is read and decrypted one segment at a time, never the whole object.
//!
//! An encrypted object ("part") is laid out as:
//!
//! ```text
//! +--------+------------------------+------------------------+-----+---------------------+
//! | header | segment 0              | segment 1              | ... | segment n-1 (short) |
//! | 16 B   | SEGMENT_BYTES + 16 tag | SEGMENT_BYTES + 16 tag |     | rest + 16 tag       |
//! +--------+------------------------+------------------------+-----+---------------------+
//! header = "FLT1" | 4 reserved zero bytes | 8-byte random nonce prefix
//! nonce of segment i = nonce prefix | i as u32 big-endian
//! AAD of segment i   = i as u64 big-endian | 1 if it is the object's last segment else 0
//! ```
//!
//! The random prefix makes every object's nonces distinct under the one key; the index and
//! the last-segment flag in the AAD make a reordered or truncated object fail to decrypt.
//! The plaintext length of each part is kept in the metadata, so the segment count is known.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Plaintext bytes per segment (the last one of an object may be shorter).
pub const SEGMENT_BYTES: u64 = 256 * 1024;
/// The GCM tag each segment carries.
pub const TAG_BYTES: u64 = 16;
/// The object header: magic, reserved bytes, nonce prefix.
pub const HEADER_BYTES: u64 = 16;
const MAGIC: &[u8; 4] = b"FLT1";

/// Why a key could not be loaded or data could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file is missing, unreadable or not 64 hex digits.
    #[error("encryption key {path}: {message}")]
    Key { path: String, message: String },
    /// A stored segment does not authenticate: the object was altered, truncated or
    /// encrypted with another key.
    #[error(
        "stored data failed authentication (segment {segment}): it is damaged or was written with another key"
    )]
    Authentication { segment: u64 },
    /// The object header is not Flotilla's.
    #[error("stored object has no valid encryption header")]
    Header,
    /// The cipher refused the key or a segment (only for inputs far beyond a segment).
    #[error("AES-256-GCM could not {0}")]
    Cipher(&'static str),
}

/// The registry's data key. Sealing and opening run through ring's AES-GCM, whose
/// AES-NI/VAES and carry-less-multiply code keeps encryption far cheaper than the disk write;
/// the layout is plain AES-256-GCM, so objects stored by any implementation read back.
#[derive(Clone)]
pub struct DataKey {
    cipher: Arc<LessSafeKey>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| CryptoError::Cipher("accept the key"))?;
        Ok(Self {
            cipher: Arc::new(LessSafeKey::new(key)),
        })
    }

    /// A fresh random key (in-memory registries, tests).
    pub fn random() -> Result<Self, CryptoError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(&bytes)
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "expected 64 hex digits (a 256-bit key)".to_owned())?;
        Self::from_bytes(&bytes).map_err(|e| e.to_string())
    }

    /// Reads the key file at `path`, creating it (mode 0600, written then renamed) with a
    /// random key if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let error = |message: String| CryptoError::Key {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text).map_err(error),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
                }
                let temporary = path.with_extension("tmp");
                std::fs::write(&temporary, hex::encode(bytes)).map_err(|e| error(e.to_string()))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| error(e.to_string()))?;
                }
                std::fs::rename(&temporary, path).map_err(|e| error(e.to_string()))?;
                Self::from_bytes(&bytes)
            }
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// A new object's header, with a fresh nonce prefix.
    pub fn new_header() -> [u8; HEADER_BYTES as usize] {
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..4].copy_from_slice(MAGIC);
        rand::rng().fill_bytes(&mut header[8..]);
        header
    }

    /// The nonce prefix of an object from its header.
    pub fn nonce_prefix(header: &[u8]) -> Result<[u8; 8], CryptoError> {
        if header.len() < HEADER_BYTES as usize || &header[..4] != MAGIC {
            return Err(CryptoError::Header);
        }
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&header[8..16]);
        Ok(prefix)
    }

    /// Encrypts segment `index` of an object in place and returns its tag, which follows
    /// the ciphertext in the stored object.
    pub fn seal_in_place(
        &self,
        prefix: &[u8; 8],
        index: u64,
        last: bool,
        segment: &mut [u8],
    ) -> Result<[u8; TAG_BYTES as usize], CryptoError> {
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(prefix, index)),
                Aad::from(aad(index, last)),
                segment,
            )
            .map_err(|_| CryptoError::Cipher("seal a segment"))?;
        let mut bytes = [0u8; TAG_BYTES as usize];
        bytes.copy_from_slice(tag.as_ref());
        Ok(bytes)
    }

    /// Encrypts segment `index` of an object and appends ciphertext and tag to `out`.
    pub fn seal_segment(
        &self,
        prefix: &[u8; 8],
        index: u64,
        last: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(prefix, index, last, &mut out[start..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts segment `index` (ciphertext followed by its tag) in place; returns the
    /// plaintext length, which `sealed` now starts with.
    pub fn open_in_place(
        &self,
        prefix: &[u8; 8],
        index: u64,
        last: bool,
        sealed: &mut [u8],
    ) -> Result<usize, CryptoError> {
        self.cipher
            .open_in_place(
                Nonce::assume_unique_for_key(nonce(prefix, index)),
                Aad::from(aad(index, last)),
                sealed,
            )
            .map(|plain| plain.len())
            .map_err(|_| CryptoError::Authentication { segment: index })
    }

    /// Decrypts segment `index` (ciphertext with its tag) into a new buffer.
    pub fn open_segment(
        &self,
        prefix: &[u8; 8],
        index: u64,
        last: bool,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buffer = sealed.to_vec();
        let len = self.open_in_place(prefix, index, last, &mut buffer)?;
        buffer.truncate(len);
        Ok(buffer)
    }

    /// Encrypts a whole small object (header included).
    pub fn seal_all(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let header = Self::new_header();
        let prefix = Self::nonce_prefix(&header)?;
        let mut out = Vec::with_capacity(encrypted_len(plaintext.len() as u64) as usize);
        out.extend_from_slice(&header);
        let count = segment_count(plaintext.len() as u64);
        for index in 0..count {
            let start = (index * SEGMENT_BYTES) as usize;
            let end = (start + SEGMENT_BYTES as usize).min(plaintext.len());
            self.seal_segment(
                &prefix,
                index,
                index + 1 == count,
                &plaintext[start..end],
                &mut out,
            )?;
        }
        Ok(out)
    }
}

fn nonce(prefix: &[u8; 8], index: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(&(index as u32).to_be_bytes());
    nonce
}

fn aad(index: u64, last: bool) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..8].copy_from_slice(&index.to_be_bytes());
    aad[8] = u8::from(last);
    aad
}

/// How many segments hold `plain_len` bytes (an empty object has none).
pub fn segment_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(SEGMENT_BYTES)
}

/// The stored size of an object holding `plain_len` bytes.
pub fn encrypted_len(plain_len: u64) -> u64 {
    HEADER_BYTES + plain_len + segment_count(plain_len) * TAG_BYTES
}

/// Which stored bytes serve a plaintext range, and how to cut the decrypted segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    /// Segment indexes to read and decrypt.
    pub segments: Range<u64>,
    /// The stored byte range covering exactly those segments.
    pub stored: Range<u64>,
    /// Plaintext bytes to drop from the front of the first decrypted segment.
    pub skip: u64,
    /// Plaintext bytes to return in all.
    pub take: u64,
}

/// Maps a plaintext range of an object of `plain_len` bytes to the segments holding it.
/// The range must be non-empty and within the object.
pub fn segment_span(range: Range<u64>, plain_len: u64) -> SegmentSpan {
    debug_assert!(range.start < range.end && range.end <= plain_len);
    let first = range.start / SEGMENT_BYTES;
    let last = (range.end - 1) / SEGMENT_BYTES;
    let stored_start = HEADER_BYTES + first * (SEGMENT_BYTES + TAG_BYTES);
    let last_plain_end = ((last + 1) * SEGMENT_BYTES).min(plain_len);
    let stored_end = HEADER_BYTES + last_plain_end + (last + 1) * TAG_BYTES;
    SegmentSpan {
        segments: first..last + 1,
        stored: stored_start..stored_end,
        skip: range.start - first * SEGMENT_BYTES,
        take: range.end - range.start,
    }
}

/// The stored length of segment `index` of an object of `plain_len` bytes (with its tag).
pub fn sealed_segment_len(index: u64, plain_len: u64) -> u64 {
    let start = index * SEGMENT_BYTES;
    (plain_len - start).min(SEGMENT_BYTES) + TAG_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decrypt_range(key: &DataKey, stored: &[u8], plain_len: u64, range: Range<u64>) -> Vec<u8> {
        let prefix = DataKey::nonce_prefix(stored).unwrap();
        let span = segment_span(range, plain_len);
        let bytes = &stored[span.stored.start as usize..span.stored.end as usize];
        let mut out = Vec::new();
        let mut offset = 0usize;
        let count = segment_count(plain_len);
        for index in span.segments.clone() {
            let len = sealed_segment_len(index, plain_len) as usize;
            let plain = key
                .open_segment(
                    &prefix,
                    index,
                    index + 1 == count,
                    &bytes[offset..offset + len],
                )
                .unwrap();
            offset += len;
            out.extend_from_slice(&plain);
        }
        assert_eq!(offset, bytes.len());
        out[span.skip as usize..(span.skip + span.take) as usize].to_vec()
    }

    #[test]
    fn empty_object_is_just_a_header() {
        let key = DataKey::random().unwrap();
        let stored = key.seal_all(b"").unwrap();
        assert_eq!(stored.len() as u64, encrypted_len(0));
        assert_eq!(stored.len() as u64, HEADER_BYTES);
    }

    #[test]
    fn tampering_and_truncation_are_detected() {
        let key = DataKey::random().unwrap();
        let data = vec![7u8; (SEGMENT_BYTES * 2) as usize];
        let mut stored = key.seal_all(&data).unwrap();
        let prefix = DataKey::nonce_prefix(&stored).unwrap();
        // The first segment presented as the last one (truncation) fails.
        let first =
            &stored[HEADER_BYTES as usize..(HEADER_BYTES + SEGMENT_BYTES + TAG_BYTES) as usize];
        assert!(key.open_segment(&prefix, 0, true, first).is_err());
        assert!(key.open_segment(&prefix, 0, false, first).is_ok());
        stored[HEADER_BYTES as usize + 3] ^= 1;
        let first =
            &stored[HEADER_BYTES as usize..(HEADER_BYTES + SEGMENT_BYTES + TAG_BYTES) as usize];
        assert!(key.open_segment(&prefix, 0, false, first).is_err());
        // Another key cannot read it.
        let other = DataKey::random().unwrap();
        let stored = key.seal_all(b"hello").unwrap();
        let prefix = DataKey::nonce_prefix(&stored).unwrap();
        assert!(other.open_segment(&prefix, 0, true, &stored[16..]).is_err());
    }

    #[test]
    fn segments_are_standard_aes_256_gcm() {
        // Computed independently (Python `cryptography`, i.e. OpenSSL): objects stored by
        // any earlier AES-256-GCM implementation must still open.
        let key_bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = DataKey::from_bytes(&key_bytes).unwrap();
        let prefix: [u8; 8] = std::array::from_fn(|i| 0xa0 + i as u8);
        let mut out = Vec::new();
        key.seal_segment(&prefix, 3, true, b"flotilla segment", &mut out)
            .unwrap();
        assert_eq!(
            hex::encode(&out),
            "6b7ecfca9e8035f65b01410c8f01f6a6e75d68dd398a53b8e75b7fc1dcab43b4"
        );
        assert_eq!(
            key.open_segment(&prefix, 3, true, &out).unwrap(),
            b"flotilla segment"
        );
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let key = DataKey::random().unwrap();
        let marker = b"flotilla-plaintext-marker-0123456789";
        let stored = key.seal_all(marker).unwrap();
        assert!(!stored.windows(marker.len()).any(|w| w == marker));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_range_decrypts_to_the_same_bytes(
            len in 1u64..(SEGMENT_BYTES * 3 + 100),
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let key = DataKey::random().unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let stored = key.seal_all(&data).unwrap();
            prop_assert_eq!(stored.len() as u64, encrypted_len(len));
            let start = a % len;
            let end = start + 1 + b % (len - start);
            let span = segment_span(start..end, len);
            prop_assert!(span.stored.end <= stored.len() as u64);
            prop_assert!(span.segments.end <= segment_count(len));
            let got = decrypt_range(&key, &stored, len, start..end);
            prop_assert_eq!(&got[..], &data[start as usize..end as usize]);
        }
    }
}
