//! An encoded record as a redb value: the value type of every record table names the record it
//! holds, so a table cannot be opened with the wrong record type.

use std::fmt;
use std::marker::PhantomData;

use redb::{TypeName, Value};

use super::StoreError;
use super::codec::{self, Record};

/// An encoded record as redb stores it. Decoding is explicit (`decode`) so that a corrupt or
/// unknown record is an error, not a panic inside redb.
pub struct Stored<R> {
    bytes: Vec<u8>,
    record: PhantomData<R>,
}

impl<R: Record> Stored<R> {
    pub fn encode(record: &R) -> Result<Self, StoreError> {
        Ok(Self {
            bytes: codec::encode(record)?,
            record: PhantomData,
        })
    }

    pub fn decode(&self) -> Result<R, StoreError> {
        codec::decode(&self.bytes)
    }
}

impl<R> fmt::Debug for Stored<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stored({} bytes)", self.bytes.len())
    }
}

impl<R: Record> Value for Stored<R> {
    type SelfType<'a>
        = Stored<R>
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Stored<R>
    where
        Self: 'a,
    {
        Stored {
            bytes: data.to_vec(),
            record: PhantomData,
        }
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Stored<R>) -> &'a [u8]
    where
        Self: 'b,
    {
        &value.bytes
    }

    fn type_name() -> TypeName {
        TypeName::new(&format!("master_controller::{}", R::KIND))
    }
}
