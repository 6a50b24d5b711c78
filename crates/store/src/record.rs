//! The on-disk layout of the redb backend: its two tables and how a record is encoded.
//!
//! ```text
//! table "kv":   key (str) -> create_revision u64 LE | mod_revision u64 LE | version u64 LE | value
//! table "meta": "revision" -> the last committed revision (u64)
//!               "format"   -> FORMAT (u64); absent in files from before it was introduced
//! ```
//! A fixed 24-byte header in front of the value keeps a record one redb value, so a get is one
//! B-tree lookup and a compare only reads the header.

use redb::TableDefinition;

use crate::{KeyValue, Revision, StoreError};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_FORMAT: &str = "format";
/// The layout above. Bump it (and teach [`crate::RedbStore::open`] to migrate) when it changes.
pub(crate) const FORMAT: u64 = 1;

pub(crate) const HEADER_BYTES: usize = 24;

/// Maps a redb failure to a [`StoreError`] that says what the store was doing.
pub(crate) fn redb_error<E: Into<redb::Error>>(doing: &str) -> impl Fn(E) -> StoreError + '_ {
    move |error| match error.into() {
        redb::Error::Corrupted(message) => StoreError::Corrupt(format!("{doing}: {message}")),
        other => StoreError::Storage(format!("{doing}: {other}")),
    }
}

/// A record's metadata, all a compare or a put needs from the previous state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
}

/// A decoded record: what a read returns and what a delete's event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub header: Header,
    pub value: Vec<u8>,
}

impl Record {
    pub fn into_key_value(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.header.create_revision,
            mod_revision: self.header.mod_revision,
            version: self.header.version,
        }
    }
}

#[cfg(test)]
pub(crate) fn encode(header: Header, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0; HEADER_BYTES + value.len()];
    encode_into(header, value, &mut out);
    out
}

/// Writes the record into `out`, which is exactly `HEADER_BYTES + value.len()` long: the
/// writer hands it the space redb reserved in the page, so the value is copied once.
pub(crate) fn encode_into(header: Header, value: &[u8], out: &mut [u8]) {
    out[0..8].copy_from_slice(&header.create_revision.to_le_bytes());
    out[8..16].copy_from_slice(&header.mod_revision.to_le_bytes());
    out[16..24].copy_from_slice(&header.version.to_le_bytes());
    out[HEADER_BYTES..].copy_from_slice(value);
}

pub(crate) fn decode_header(key: &str, bytes: &[u8]) -> Result<Header, StoreError> {
    let word = |i: usize| -> Result<u64, StoreError> {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the record for '{key}' is {} bytes, shorter than its {HEADER_BYTES}-byte header",
                    bytes.len()
                ))
            })
    };
    let header = Header {
        create_revision: word(0)?,
        mod_revision: word(1)?,
        version: word(2)?,
    };
    // Every write sets all three; zeros mean the bytes are not a record.
    if header.create_revision == 0
        || header.mod_revision < header.create_revision
        || header.version == 0
    {
        return Err(StoreError::Corrupt(format!(
            "the record for '{key}' has an impossible header {header:?}"
        )));
    }
    Ok(header)
}

pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    let header = decode_header(key, bytes)?;
    Ok(Record {
        header,
        value: bytes[HEADER_BYTES..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let header = Header {
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        };
        let bytes = encode(header, b"hello");
        assert_eq!(
            decode("k", &bytes).unwrap(),
            Record {
                header,
                value: b"hello".to_vec()
            }
        );
        assert!(matches!(
            decode("k", &bytes[..10]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode("k", &[0u8; 30]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
