//! [`Rare`]: a part of a spec that most programs leave as it usually is, kept on the heap only
//! when it is not.
//!
//! A daemon holds a spec per program (thousands of them), and limits, hooks, placement and log
//! settings inline would make each one hundreds of bytes larger while almost all of them hold
//! the usual value (`docs/benchmarks.md`, "RSS at 10 000 stopped"). A [`Rare`] is one pointer.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type with a usual value that can be shared by every [`Rare`] holding it.
pub trait Usual: Clone + PartialEq + 'static {
    /// The usual value.
    fn usual() -> &'static Self;
}

/// A `T` that reads, compares, prints and serializes as the `T` itself, stored as nothing when it
/// is [`Usual::usual`] and boxed otherwise. Writing through it boxes it.
pub struct Rare<T: Usual>(Option<Box<T>>);

impl<T: Usual> Rare<T> {
    pub fn new(value: T) -> Rare<T> {
        if value == *T::usual() {
            Rare(None)
        } else {
            Rare(Some(Box::new(value)))
        }
    }
}

impl<T: Usual> Default for Rare<T> {
    /// The usual value.
    fn default() -> Rare<T> {
        Rare(None)
    }
}

impl<T: Usual> From<T> for Rare<T> {
    fn from(value: T) -> Rare<T> {
        Rare::new(value)
    }
}

impl<T: Usual> Deref for Rare<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            None => T::usual(),
        }
    }
}

impl<T: Usual> DerefMut for Rare<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(|| Box::new(T::usual().clone()))
    }
}

impl<T: Usual> Clone for Rare<T> {
    fn clone(&self) -> Rare<T> {
        Rare(self.0.clone())
    }
}

impl<T: Usual> PartialEq for Rare<T> {
    fn eq(&self, other: &Rare<T>) -> bool {
        **self == **other
    }
}

impl<T: Usual + Eq> Eq for Rare<T> {}

impl<T: Usual + fmt::Debug> fmt::Debug for Rare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Usual + Serialize> Serialize for Rare<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Usual + Deserialize<'de>> Deserialize<'de> for Rare<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rare<T>, D::Error> {
        T::deserialize(d).map(Rare::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Limit, Limits};

    #[test]
    fn the_usual_value_takes_no_box_and_reads_serializes_and_compares_as_itself() {
        let usual = Rare::new(Limits::default());
        assert!(usual.0.is_none());
        assert_eq!(usual, Rare::default());
        let set = Limits {
            nofile: Some(Limit::Value(1024)),
            ..Limits::default()
        };
        let mut written = Rare::new(Limits::default());
        written.nofile = Some(Limit::Value(1024));
        assert_eq!(*written, set);
        assert_eq!(written, Rare::new(set.clone()));
        assert_ne!(written, usual);
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            serde_json::to_string(&set).unwrap()
        );
        assert_eq!(format!("{written:?}"), format!("{set:?}"));
        let back: Rare<Limits> = serde_json::from_str("{}").unwrap();
        assert!(back.0.is_none(), "a usual value read back is not boxed");
        let back: Rare<Limits> = serde_json::from_str(r#"{"nofile":1024}"#).unwrap();
        assert_eq!(back, written);
    }
}
