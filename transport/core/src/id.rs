//! Identifier newtypes. Topic, region and cluster ids are content-addressed (xxh3 hashes), so
//! every node derives the same id from the same name without a central allocator.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// A node's identity in the cluster: unique per process lifetime (the builder draws it at
/// random unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A topic on the wire: the stable 64-bit xxh3 hash of the topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub u64);

impl TopicId {
    /// The id of the topic called `name` (stable across versions and machines).
    pub fn from_name(name: &str) -> TopicId {
        TopicId(xxh3_64(name.as_bytes()))
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A region: the set of nodes whose subscription signatures are equal. Its id is the hash of
/// the sorted topic ids of that signature (see `qs-regions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u64);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A cluster: nodes only accept datagrams that carry their own cluster id, so several clusters
/// can share a network and its multicast groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of the cluster called `name` (its xxh3 hash; a keyed cluster takes its id from the key file instead).
    pub fn from_name(name: &str) -> ClusterId {
        ClusterId(xxh3_64(name.as_bytes()))
    }
}

/// Ids appear in reports and metrics as their hex `Display` form (cluster ids as numbers).
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(NodeId, TopicId, RegionId);

impl serde::Serialize for ClusterId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_ids_are_stable_across_builds() {
        // Pinned values: changing the hash would split clusters running different versions.
        assert_eq!(TopicId::from_name(""), TopicId(0x2d06800538d394c2));
        assert_ne!(TopicId::from_name("a"), TopicId::from_name("b"));
    }
}
