//! The versioned record envelope. bincode is unmaintained (RUSTSEC-2025-0141), so it is used
//! here and nowhere else: swapping the encoding means changing this file only.
//!
//! Layout: one magic byte, the record's version as u16 little-endian, then the bincode payload.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

const MAGIC: u8 = 0xA7;
const HEADER_LEN: usize = 3;

/// A value stored in a table. `VERSION` is bumped whenever the serialized shape changes, and
/// `upgrade` decodes payloads written by older versions.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    /// Stable name, also used as the redb type name of the table's values.
    const KIND: &'static str;
    const VERSION: u16;

    fn upgrade(version: u16, _payload: &[u8]) -> Result<Self, StoreError> {
        Err(unknown_version::<Self>(version))
    }
}

/// The error for a record version this binary cannot read.
pub fn unknown_version<R: Record>(found: u16) -> StoreError {
    StoreError::UnknownRecordVersion {
        kind: R::KIND,
        found,
        supported: R::VERSION,
    }
}

pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64);
    out.push(MAGIC);
    out.extend_from_slice(&R::VERSION.to_le_bytes());
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard()).map_err(
        |e| StoreError::Encode {
            kind: R::KIND,
            reason: e.to_string(),
        },
    )?;
    Ok(out)
}

pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, StoreError> {
    if bytes.len() < HEADER_LEN || bytes[0] != MAGIC {
        return Err(StoreError::Decode {
            kind: R::KIND,
            reason: "missing record envelope".into(),
        });
    }
    let version = u16::from_le_bytes([bytes[1], bytes[2]]);
    let payload = &bytes[HEADER_LEN..];
    if version != R::VERSION {
        return R::upgrade(version, payload);
    }
    decode_payload::<R, R>(payload)
}

/// Decodes a payload of the current shape; `Record::upgrade` implementations use it for the
/// older shapes they know.
pub fn decode_payload<T: DeserializeOwned, R: Record>(payload: &[u8]) -> Result<T, StoreError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| StoreError::Decode {
            kind: R::KIND,
            reason: e.to_string(),
        })?;
    if used != payload.len() {
        return Err(StoreError::Decode {
            kind: R::KIND,
            reason: format!("{} trailing bytes", payload.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        name: String,
        count: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct V1 {
        name: String,
    }

    impl Record for V2 {
        const KIND: &'static str = "test";
        const VERSION: u16 = 2;

        fn upgrade(version: u16, payload: &[u8]) -> Result<Self, StoreError> {
            match version {
                1 => {
                    let old: V1 = decode_payload::<V1, Self>(payload)?;
                    Ok(V2 {
                        name: old.name,
                        count: 0,
                    })
                }
                _ => Err(StoreError::UnknownRecordVersion {
                    kind: Self::KIND,
                    found: version,
                    supported: Self::VERSION,
                }),
            }
        }
    }

    #[test]
    fn round_trips_current_version() {
        let value = V2 {
            name: "a".into(),
            count: 7,
        };
        let bytes = encode(&value).unwrap();
        assert_eq!(&bytes[..3], &[MAGIC, 2, 0]);
        assert_eq!(decode::<V2>(&bytes).unwrap(), value);
    }

    #[test]
    fn upgrades_older_version() {
        let mut bytes = vec![MAGIC, 1, 0];
        bincode::serde::encode_into_std_write(
            &V1 { name: "old".into() },
            &mut bytes,
            bincode::config::standard(),
        )
        .unwrap();
        let value = decode::<V2>(&bytes).unwrap();
        assert_eq!(
            value,
            V2 {
                name: "old".into(),
                count: 0
            }
        );
    }

    #[test]
    fn rejects_unknown_version_and_garbage() {
        let bytes = vec![MAGIC, 9, 0, 1, 2];
        assert!(matches!(
            decode::<V2>(&bytes),
            Err(StoreError::UnknownRecordVersion { found: 9, .. })
        ));
        assert!(matches!(
            decode::<V2>(&[1, 2]),
            Err(StoreError::Decode { .. })
        ));
        let mut truncated = encode(&V2 {
            name: "abc".into(),
            count: 1,
        })
        .unwrap();
        truncated.truncate(4);
        assert!(decode::<V2>(&truncated).is_err());
    }
}
